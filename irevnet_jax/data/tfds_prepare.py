"""Preparing TFDS datasets for the pipeline: ArrayRecord files, and a smaller copy of ImageNet.

The pipeline reads records by key (random access), which TFDS offers for the ArrayRecord
file format (`builder.as_data_source`), not for TFRecord. So:
- `prepare` builds a new dataset in ArrayRecord, and gives a dataset prepared earlier in
  TFRecord ArrayRecord twins of its files (`add_array_record`);
- `write_small_copy` writes a copy whose JPEGs have their shorter side reduced to at most
  `short_side` pixels, in ArrayRecord, into another data dir: fewer pixels to decode per
  training image (see docs/data_and_launch.md for what it buys).

Why not TFDS's own `tfds convert_format` (TFDS 4.9.10): its module imports Apache Beam at
import time even without `--use_beam` (a `beam.DoFn` subclass at module level), which would
add apache-beam and ~15 packages (pyarrow, a protobuf upgrade, ...) for the few lines
below; without Beam it converts one shard after the other and drops a failed shard's error
when `num_workers > 1`; and it cannot read ArrayRecord shards (no `make_tf_data`), which the
small copy starts from. `add_array_record` writes what it writes (group_size:1 ArrayRecord
twins of the shards, the format listed in `alternativeFileFormats`), so with Beam installed
`tfds convert_format --dataset_version_dir=DIR --out_file_format=array_record` is an
equivalent (docs/data_and_launch.md).

Imported lazily by `irevnet_jax.data.tfds_records` (after it hides accelerators from TensorFlow).
"""
import concurrent.futures
import json
import os
from typing import Iterator, Optional

import tensorflow as tf
import tensorflow_datasets as tfds

ARRAY_RECORD = 'array_record'
_INFO_FILE = 'dataset_info.json'


def file_formats(builder) -> set:
  """The file formats a prepared dataset holds, e.g. {'tfrecord', 'array_record'}."""
  return {f.value for f in builder.info.available_file_formats()}


def open_builder(name: str, data_dir: Optional[str]):
  """The TFDS builder of `name` in data_dir. A prepared dataset's is built from its files:
  TFDS 4.9's registered builders ignore the file formats that dataset_info.json lists
  beside the one it was prepared in (e.g. ArrayRecord added by `add_array_record`)."""
  builder = tfds.builder(name, data_dir=data_dir)
  return tfds.builder_from_directory(builder.data_dir) if builder.is_prepared() else builder


def prepare(name: str, data_dir: Optional[str], manual_dir: Optional[str]):
  """Prepares `name` in ArrayRecord (downloads CIFAR; builds ImageNet from the manual tars),
  or adds ArrayRecord files to a dataset prepared in TFRecord. Returns `open_builder`'s.

  Raises AssertionError (TFDS's) if ImageNet's manual files are missing.
  """
  builder = open_builder(name, data_dir)
  if not builder.is_prepared():
    builder = tfds.builder(name, data_dir=data_dir, file_format=ARRAY_RECORD)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  elif ARRAY_RECORD not in file_formats(builder):
    add_array_record(builder)
  return open_builder(name, data_dir)


def _shard_pairs(builder, source_format: str, out_dir: str):
  """(path in source_format, ArrayRecord path in out_dir) of every shard of every split."""
  pairs = []
  for split in builder.info.splits.values():
    template = split.filename_template
    sources = sorted(template.replace(filetype_suffix=source_format)
                     .sharded_filepaths(split.num_shards))
    targets = sorted(template.replace(data_dir=out_dir, filetype_suffix=ARRAY_RECORD)
                     .sharded_filepaths(split.num_shards))
    pairs += [(os.fspath(s), os.fspath(t)) for s, t in zip(sources, targets)]
  return pairs


def _records(path: str) -> Iterator[bytes]:
  """The serialized examples of one shard, TFRecord or ArrayRecord, in order."""
  if '.array_record-' in os.path.basename(path):
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    source = array_record_data_source.ArrayRecordDataSource([path])
    for start in range(0, len(source), 1024):
      yield from source.__getitems__(range(start, min(start + 1024, len(source))))
  else:
    yield from tf.data.TFRecordDataset(path).as_numpy_iterator()


def _write(path: str, records) -> int:
  """Writes records to the ArrayRecord file `path` (through path + '.incomplete')."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  partial = path + '.incomplete'
  writer = array_record_module.ArrayRecordWriter(partial, 'group_size:1')
  count = 0
  for record in records:
    writer.write(record)
    count += 1
  writer.close()
  tf.io.gfile.rename(partial, path, overwrite=True)
  print(f'wrote {count} examples to {path}', flush=True)   # hours for ImageNet: show progress
  return count


def _edit_info(dataset_dir: str, edit) -> None:
  path = os.path.join(dataset_dir, _INFO_FILE)
  with tf.io.gfile.GFile(path) as f:
    info = json.load(f)
  edit(info)
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump(info, f, indent=2)


def add_array_record(builder, workers: int = 8) -> None:
  """Writes an ArrayRecord twin of every TFRecord shard beside it and records the format in
  dataset_info.json (the TFRecord files stay; they may be deleted afterwards)."""
  pairs = _shard_pairs(builder, builder.info.file_format.value, builder.data_dir)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    list(pool.map(lambda pair: _write(pair[1], _records(pair[0])), pairs))

  def add(info):
    formats = set(info.get('alternativeFileFormats', [])) | {ARRAY_RECORD}
    info['alternativeFileFormats'] = sorted(formats - {info.get('fileFormat')})
  _edit_info(builder.data_dir, add)


def shrink_jpeg(encoded, short_side: int, quality: int):
  """JPEG bytes -> the same image with its shorter side at most short_side, re-encoded."""
  image = tf.io.decode_jpeg(encoded, channels=3)
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = short_side / tf.reduce_min(hw)

  def smaller():
    new_hw = tf.cast(tf.round(hw * scale), tf.int32)
    resized = tf.image.resize(image, new_hw, 'bilinear', antialias=True)
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return tf.io.encode_jpeg(resized, quality=quality)
  return tf.cond(scale < 1.0, smaller, lambda: encoded)


def _shrink_records(records, short_side: int, quality: int) -> Iterator[bytes]:
  """Serialized examples with their 'image' JPEG shrunk; other features unchanged."""
  ds = tf.data.Dataset.from_generator(lambda: records,
                                      output_signature=tf.TensorSpec([], tf.string))
  spec = {'image': tf.io.FixedLenFeature([], tf.string)}

  def shrink(serialized):
    image = tf.io.parse_single_example(serialized, spec)['image']
    return serialized, shrink_jpeg(image, short_side, quality)
  ds = ds.map(shrink, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  for serialized, image in ds.as_numpy_iterator():
    example = tf.train.Example.FromString(serialized)
    example.features.feature['image'].bytes_list.value[0] = image
    yield example.SerializeToString()


def write_small_copy(builder, out_data_dir: str, short_side: int, quality: int = 90) -> str:
  """Copies a prepared image dataset into out_data_dir (same name and version, ArrayRecord)
  with every JPEG's shorter side reduced to at most short_side pixels. Returns its dir."""
  out_dir = os.path.join(out_data_dir, builder.info.full_name)
  tf.io.gfile.makedirs(out_dir)
  formats = file_formats(builder)
  source_format = ARRAY_RECORD if ARRAY_RECORD in formats else builder.info.file_format.value
  for source, target in _shard_pairs(builder, source_format, out_dir):
    _write(target, _shrink_records(_records(source), short_side, quality))
  for name in tf.io.gfile.listdir(builder.data_dir):
    if name.endswith(('.json', '.txt')):
      tf.io.gfile.copy(os.path.join(builder.data_dir, name), os.path.join(out_dir, name),
                       overwrite=True)

  def point_to_copy(info):
    info['fileFormat'] = ARRAY_RECORD
    info.pop('alternativeFileFormats', None)
    info['description'] = (f'{info.get("description", "")}\n\nA copy with JPEGs shrunk to '
                           f'a shorter side <= {short_side} px, quality {quality}.')
  _edit_info(out_dir, point_to_copy)
  return out_dir
