"""TFDS input pipelines for ImageNet (imagenet2012) and CIFAR-10/100: random access, global shuffle.

`get_tfds_source(dataset_config, model_input_shape)` returns a data source for the
training loop (the protocol of `irevnet_jax.data.input_pipeline`): `train_batches` is an
endless, seeded iterator that can start at any step, and `eval_batches` one padded pass
in which every eval example appears exactly once over all processes. Batches are numpy:
  train: {'image': uint8 (B, H, W, C), 'label': int32 (B,)}
  eval:  the same + 'mask': float32 (B,) (0 = padding) + 'index': int32 (B,) (the
         example's position in the eval split, -1 = padding).
Images are not normalised here: the model's input is
`(image.astype(float32) - source.pixel_mean) / source.pixel_std`, computed on the device.

Reading: records are read by key from TFDS's ArrayRecord files (`builder.as_data_source`),
one batched read (`__getitems__` of the batch's keys) per step, ahead of the augmentation;
ArrayRecord reads the shards a batch touches in parallel, local or on `gs://`.
The order of training records is `irevnet_jax.data.data_order`: each epoch a new permutation
of the whole split from (seed, epoch); global batch s is positions [s * G, (s + 1) * G)
of the stream of epochs and process p reads rows [p * B, (p + 1) * B) of it. Each
example is augmented with stateless random ops seeded by (seed, epoch, its key), on
TensorFlow's CPU threads (tf.data, deterministic order). Resuming at step s computes the
keys of step s: no record before it is read.

TensorFlow is imported only here and in the modules this one imports lazily
(`tfds_augment`, `tfds_prepare`), and never sees a GPU or TPU.

Fields of the `dataset` config: `irevnet_jax.data.tfds_options` and docs/data_and_launch.md
(only `name` is required; None means the default).
"""
import itertools
import os
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

from irevnet_jax.data import data_order
from irevnet_jax.data.tfds_options import IMAGENET_TARS, SPECS, Options, check_input_shape, parse_options, pixel_stats

# ---------------------------------------------------------------------------------------------
# TensorFlow, lazily and without accelerators.

def _tf():
  """Imports TensorFlow (CPU only) and TFDS."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      # TF's runtime already started: it must not have claimed an accelerator.
      if tf.config.get_visible_devices(kind):
        raise RuntimeError(f'TensorFlow was initialised with a visible {kind} before '
                           'irevnet_jax.data.tfds_pipeline could hide it; it would compete with JAX '
                           'for the accelerator. Import this module before using TensorFlow.')
  return tf, tfds


def imagenet_missing_message(opts: Options, builder_data_dir: str, detail: str = '') -> str:
  """How to download and prepare ImageNet by hand (TFDS cannot download it)."""
  data_dir = opts.data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  manual = opts.manual_dir or os.path.join(data_dir, 'downloads', 'manual')
  found = [t for t in IMAGENET_TARS if os.path.exists(os.path.join(os.path.expanduser(manual), t))]
  return (
      f'ImageNet ({opts.name}) is not prepared in {builder_data_dir}{detail}. TFDS cannot '
      'download it; prepare it once (a few hours, ~155 GB written):\n'
      '  1. Register at https://image-net.org/download-images and download '
      'ILSVRC2012_img_train.tar (~138 GB) and ILSVRC2012_img_val.tar (~6.3 GB).\n'
      f'  2. Put both files, unextracted, in the manual download dir {manual} '
      f'(dataset.manual_dir; found there now: {found or "neither"}).\n'
      '  3. Build the ArrayRecord files from one process, before training:\n'
      f'       python launch/prepare_data.py --dataset={opts.name} --data_dir={data_dir} '
      f'--manual_dir={manual}\n'
      '     which runs tfds.builder("imagenet2012", data_dir=DATA_DIR, '
      'file_format="array_record").download_and_prepare('
      'download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR)); the TFDS CLI '
      f'equivalent is `tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual} '
      '--file_format=array_record` (TFDS 4.9 needs apache-beam installed for its CLI).\n'
      '  4. Train with dataset.data_dir set to that data dir (see docs/data_and_launch.md).\n'
      'To try the model and the runner without ImageNet, train on random images instead: '
      '--config.dataset.name=synthetic.')


def prepare(name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None):
  """Prepares the TFDS dataset `name` in ArrayRecord: downloads CIFAR, builds ImageNet from
  the manual tars, or adds ArrayRecord files to a dataset prepared earlier in TFRecord.

  Run it once, from one process, before training. Returns the TFDS builder.
  """
  opts = parse_options({'name': name, 'data_dir': data_dir, 'manual_dir': manual_dir})
  _tf()
  from irevnet_jax.data import tfds_prepare  # pylint: disable=g-import-not-at-top
  try:
    return tfds_prepare.prepare(opts.name, opts.data_dir, opts.manual_dir)
  except AssertionError as e:  # TFDS's way of saying the manual files are missing
    if SPECS[opts.name].kind == 'imagenet':
      _, tfds = _tf()
      data_dir = tfds.builder(opts.name, data_dir=opts.data_dir).data_dir
      raise FileNotFoundError(imagenet_missing_message(opts, data_dir)) from e
    raise


# ---------------------------------------------------------------------------------------------
# The data source.

class TfdsSource:
  """A TFDS dataset as a data source: random-access reads, a global shuffle, padded eval.

  Attributes: name, input_shape (H, W, C), num_classes, num_train_examples,
  num_eval_examples (whole splits), pixel_mean and pixel_std (C floats, uint8 units),
  data_sources {split: random-access sequence of serialized examples}.
  """

  def __init__(self, opts: Options, input_shape: Tuple[int, int, int]):
    self.opts = opts
    self.spec = SPECS[opts.name]
    self.name = opts.name
    self.input_shape = input_shape
    self.num_classes = self.spec.num_classes
    self.pixel_mean, self.pixel_std = pixel_stats(self.spec, opts.normalization)
    self.pixel_max = 255.0
    self._builder = self._open()
    self.data_sources = {}
    for split, field in ((opts.eval_split, 'dataset.eval_split'),
                         (opts.train_split, 'dataset.train_split')):
      self.data_sources.setdefault(split, self._data_source(split, field))
    self.num_train_examples = len(self.data_sources[opts.train_split])
    self.num_eval_examples = len(self.data_sources[opts.eval_split])

  # -- opening and reading --------------------------------------------------------------------

  def _open(self):
    """The TFDS builder; CIFAR is downloaded and prepared if missing and allowed."""
    opts = self.opts
    _, tfds = _tf()
    from irevnet_jax.data import tfds_prepare  # pylint: disable=g-import-not-at-top
    if self.spec.kind != 'cifar' or not opts.download:
      return tfds_prepare.open_builder(opts.name, opts.data_dir)
    try:
      return tfds_prepare.prepare(opts.name, opts.data_dir, None)
    except Exception as e:
      raise RuntimeError(
          f'Could not download and prepare {opts.name} into '
          f'{tfds.builder(opts.name, data_dir=opts.data_dir).data_dir}: {e}. On a machine '
          f'without internet access, run `python launch/prepare_data.py --dataset={opts.name} '
          '--data_dir=DIR` elsewhere, copy DIR over and set dataset.data_dir=DIR.') from e

  def _data_source(self, split: str, field: str):
    """TFDS's random-access reader of `split` (serialized examples), or a clear error."""
    _, tfds = _tf()
    try:
      return self._builder.as_data_source(
          split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    except NotImplementedError as e:   # no ArrayRecord files: not prepared, or TFRecord only
      raise FileNotFoundError(self._not_prepared_message()) from e
    except (ValueError, KeyError) as e:
      raise self._missing_split(split, field) from e

  def _not_prepared_message(self) -> str:
    opts, data_dir = self.opts, self._builder.data_dir
    command = f'python launch/prepare_data.py --dataset={opts.name} --data_dir=DIR'
    if self._builder.is_prepared():
      root = opts.data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
      return (f'{opts.name} in {data_dir} is prepared in TFRecord only; this pipeline reads '
              'ArrayRecord files (random access: a global shuffle, resuming without '
              'reading earlier records). Add them once, beside the TFRecords: '
              f'`{command.replace("DIR", root)}`; see docs/data_and_launch.md.')
    if self.spec.kind == 'imagenet':
      return imagenet_missing_message(opts, data_dir)
    return (f'{opts.name} is not prepared in {data_dir} and dataset.download=False: run '
            f'`{command}` (it downloads ~170 MB) and set dataset.data_dir=DIR, or set '
            'dataset.download=True.')

  def _missing_split(self, split, field):
    available = sorted(str(s) for s in self._builder.info.splits)
    hint = ''
    if self.spec.kind == 'imagenet':
      hint = (f' ImageNet splits exist only for the tars that were in the manual dir when it '
              f'was prepared ({", ".join(IMAGENET_TARS)}).')
    return ValueError(f'{field}={split!r} is not a split of {self.name} in '
                      f'{self._builder.data_dir}; available: {available}.{hint}')

  def _read(self, split: str, keys: np.ndarray) -> np.ndarray:
    """Serialized examples of `keys` (int64 (n,)) in one batched read: object (n,) of bytes.

    One `__getitems__` call per batch: ArrayRecord reads the shards it touches in parallel
    threads (the GIL released), which is what hides an object store's latency."""
    records = self.data_sources[split].__getitems__([int(k) for k in keys])  # checks count
    out = np.empty(len(records), object)
    out[:] = records
    return out

  @staticmethod
  def _parse(serialized):
    """A graph function: serialized examples (n,) -> (encoded images (n,), labels int32 (n,))."""
    tf, _ = _tf()
    features = {'image': tf.io.FixedLenFeature([], tf.string),
                'label': tf.io.FixedLenFeature([], tf.int64)}
    example = tf.io.parse_example(serialized, features)
    return example['image'], tf.cast(example['label'], tf.int32)

  def _options(self):
    """tf.data options: deterministic order; one thread per op, examples in parallel."""
    tf, _ = _tf()
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    if self.opts.cpu_threads:
      options.threading.private_threadpool_size = self.opts.cpu_threads
    return options

  # -- training -------------------------------------------------------------------------------

  def _check_process(self, local_batch_size, process_index, process_count):
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index} must be in [0, process_count='
                       f'{process_count}).')
    if local_batch_size < 1:
      raise ValueError(f'local_batch_size={local_batch_size} must be >= 1.')

  def _augment(self, encoded, seed):
    """Encoded image, stateless seed -> training image, uint8 input_shape."""
    from irevnet_jax.data import tfds_augment  # pylint: disable=g-import-not-at-top
    opts = self.opts
    if self.spec.kind == 'cifar':
      return tfds_augment.cifar_train(encoded, seed, opts.jitter)
    return tfds_augment.imagenet_train(encoded, seed, self.input_shape[:2], opts.crop_sampler,
                                       opts.crop_area_range, opts.crop_aspect_range,
                                       opts.jitter)

  def train_batches(self, local_batch_size: int, process_index: int, process_count: int,
                    seed: int, start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
    """Endless {'image': uint8 (B, H, W, C), 'label': int32 (B,)}; step k is the same batch
    whether the iterator starts at 0 or at start_step <= k, and no record of a step before
    start_step is read."""
    self._check_process(local_batch_size, process_index, process_count)
    global_batch = local_batch_size * process_count
    if global_batch > self.num_train_examples:
      raise ValueError(
          f'batch_size: the global batch {global_batch} is larger than the '
          f'{self.num_train_examples} {self.name} training examples.')
    if start_step < 0:
      raise ValueError(f'start_step={start_step} must be >= 0.')
    tf, _ = _tf()
    order = data_order.TrainOrder(self.num_train_examples, seed, global_batch)
    first_row = process_index * local_batch_size

    split = self.opts.train_split

    def steps():   # one batched read per step, ahead of the augmentation (prefetch below)
      for step in itertools.count(start_step):
        keys, seeds = order.rows(step, first_row, local_batch_size)
        yield self._read(split, keys), seeds

    def example(encoded, label, seed_pair):
      return {'image': self._augment(encoded, seed_pair), 'label': label}

    ds = tf.data.Dataset.from_generator(steps, output_signature=(
        tf.TensorSpec((local_batch_size,), tf.string),
        tf.TensorSpec((local_batch_size, 2), tf.int64)))
    ds = ds.prefetch(2).map(lambda serialized, seeds: (*self._parse(serialized), seeds))
    ds = ds.unbatch().map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(self._options()).as_numpy_iterator()

  # -- evaluation -----------------------------------------------------------------------------

  def eval_num_batches(self, local_batch_size: int, process_count: int) -> int:
    """Batches every process yields in one eval pass: ceil(ceil(N / P) / B)."""
    per_process = -(-self.num_eval_examples // process_count)
    return -(-per_process // local_batch_size)

  def _preprocess_eval(self, encoded):
    from irevnet_jax.data import tfds_augment  # pylint: disable=g-import-not-at-top
    if self.spec.kind == 'cifar':
      return tfds_augment.cifar_eval(encoded)
    return tfds_augment.imagenet_eval(encoded, self.input_shape[:2], self.opts.eval_crop_fraction)

  def eval_batches(self, local_batch_size: int, process_index: int,
                   process_count: int) -> Iterator[Dict[str, np.ndarray]]:
    """One pass over this process's contiguous slice of the eval split: {'image' uint8,
    'label', 'mask', 'index'}; padding rows (zero images, label 0, mask 0, index -1) fill
    every process to the same batch count."""
    self._check_process(local_batch_size, process_index, process_count)
    tf, _ = _tf()
    total = self.num_eval_examples
    start = process_index * total // process_count
    stop = (process_index + 1) * total // process_count
    num_batches = self.eval_num_batches(local_batch_size, process_count)
    split = self.opts.eval_split

    def chunks():   # one batched read per batch of this process's slice
      for first in range(start, stop, local_batch_size):
        keys = np.arange(first, min(first + local_batch_size, stop), dtype=np.int64)
        yield self._read(split, keys), keys.astype(np.int32)

    def example(encoded, label, index):
      return {'image': self._preprocess_eval(encoded), 'label': label,
              'mask': tf.constant(1.0, tf.float32), 'index': index}

    padding = tf.data.Dataset.from_tensors({
        'image': tf.zeros(self.input_shape, tf.uint8), 'label': tf.constant(0, tf.int32),
        'mask': tf.constant(0.0, tf.float32), 'index': tf.constant(-1, tf.int32),
    }).repeat(num_batches * local_batch_size - (stop - start))
    ds = tf.data.Dataset.from_generator(chunks, output_signature=(
        tf.TensorSpec((None,), tf.string), tf.TensorSpec((None,), tf.int32)))
    ds = ds.prefetch(2).map(lambda serialized, index: (*self._parse(serialized), index))
    ds = ds.unbatch().map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.concatenate(padding).batch(local_batch_size).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(self._options()).as_numpy_iterator()


def get_tfds_source(dataset_config, model_input_shape) -> TfdsSource:
  """The data source for `dataset_config` (fields: `tfds_options.FIELDS`; see
  docs/data_and_launch.md).

  Raises ValueError if `model_input_shape` (model.input_shape) does not fit the dataset,
  FileNotFoundError if the dataset is not prepared (with the steps that prepare it).
  """
  opts = parse_options(dataset_config)
  shape = check_input_shape(opts.name, SPECS[opts.name], model_input_shape)
  return TfdsSource(opts, shape)
