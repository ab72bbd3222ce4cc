"""A TFDS dataset's records: TensorFlow without accelerators, opening or preparing the
dataset (errors that say how to prepare it), and batched random-access reads.

    records = TfdsRecords(opts)                  # opts: tfds_options.parse_options(...)
    serialized = records.read(split, keys)       # int64 (n,) -> object (n,) of bytes
    images, labels = records.parse(serialized)   # in a tf.data graph

Records are read by key from TFDS's ArrayRecord files (`builder.as_data_source`), one
batched read (`__getitems__` of a batch's keys) per step: ArrayRecord reads the shards a
batch touches in parallel, local or on `gs://`. What the batches hold and in which order:
`irevnet_jax.data.tfds_pipeline`.

TensorFlow is imported only through `import_tf` (and by the modules imported after it:
`tfds_augment`, `tfds_prepare`), and never sees a GPU or TPU.
"""
import importlib.util
import os
from typing import Optional

import numpy as np

from irevnet_jax.data.tfds_options import IMAGENET_TARS, SPECS, Options, flag, parse_options
from irevnet_jax.errors import UserError


TFDS_EXTRA = "pip install -e '.[tfds]'"


def check_installed(name: str):
  """A UserError naming the extra to install when TensorFlow Datasets' packages are missing."""
  missing = [package for package in ('tensorflow', 'tensorflow_datasets', 'array_record')
             if importlib.util.find_spec(package) is None]
  if missing:
    raise UserError(f'dataset.name={name!r} reads TensorFlow Datasets, which needs '
                    f'{", ".join(missing)} (not installed): install the extra with '
                    f'`{TFDS_EXTRA}`, or train on dataset.name=digits or synthetic.')


def refuse_missing_imagenet(opts: Options):
  """A UserError with the guide that prepares ImageNet when the file system alone shows
  it is not there: a local data dir without an `<data_dir>/imagenet2012` folder.

  Checked before TensorFlow is imported: its import prints C++ log lines (oneDNN, absl's
  pre-init warning) that TF_CPP_MIN_LOG_LEVEL does not hide, above the guide. Other cases
  (gs:// data dirs, a folder that exists, CIFAR) are left to TFDS.
  """
  if SPECS[opts.name].kind != 'imagenet':
    return
  root = opts.data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.join('~', 'tensorflow_datasets')
  folder = os.path.join(os.path.expanduser(root), opts.name)
  if '://' in root or os.path.isdir(folder):
    return
  raise UserError(imagenet_missing_message(opts, folder))


def import_tf():
  """Imports TensorFlow (CPU only) and TFDS."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      # TF's runtime already started: it must not have claimed an accelerator.
      if tf.config.get_visible_devices(kind):
        raise UserError(f'TensorFlow was initialised with a visible {kind} before '
                        'irevnet_jax.data.tfds_records could hide it; it would compete with JAX '
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
      'To try the model and the runner without ImageNet, use random images instead: '
      f'{flag("name=synthetic")}.')


def prepare(name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None):
  """Prepares the TFDS dataset `name` in ArrayRecord: downloads CIFAR, builds ImageNet from
  the manual tars, or adds ArrayRecord files to a dataset prepared earlier in TFRecord.

  Run it once, from one process, before training. Returns the TFDS builder.
  """
  opts = parse_options({'name': name, 'data_dir': data_dir, 'manual_dir': manual_dir})
  import_tf()
  from irevnet_jax.data import tfds_prepare  # pylint: disable=g-import-not-at-top
  try:
    return tfds_prepare.prepare(opts.name, opts.data_dir, opts.manual_dir)
  except AssertionError as e:  # TFDS's way of saying the manual files are missing
    if SPECS[opts.name].kind == 'imagenet':
      _, tfds = import_tf()
      data_dir = tfds.builder(opts.name, data_dir=opts.data_dir).data_dir
      raise UserError(imagenet_missing_message(opts, data_dir)) from e
    raise


class TfdsRecords:
  """The serialized examples of a TFDS dataset, by split and key.

  Attributes: opts, spec (`tfds_options.SPECS[name]`), data_sources {split: random-access
  sequence of serialized examples} for the train and eval splits of `opts`.
  """

  def __init__(self, opts: Options):
    check_installed(opts.name)
    refuse_missing_imagenet(opts)   # before TensorFlow loads
    self.opts = opts
    self.spec = SPECS[opts.name]
    self._builder = self._open()
    self.data_sources = {}
    _, tfds = import_tf()
    for split, field in ((opts.eval_split, 'dataset.eval_split'),
                         (opts.train_split, 'dataset.train_split')):
      if split in self.data_sources:
        continue
      try:   # TFDS's random-access reader of `split` (serialized examples), or a clear error
        self.data_sources[split] = self._builder.as_data_source(
            split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
      except NotImplementedError as e:   # no ArrayRecord files: not prepared, or TFRecord only
        raise UserError(self._not_prepared_message()) from e
      except (ValueError, KeyError) as e:
        raise self._missing_split(split, field) from e

  def _open(self):
    """The TFDS builder; CIFAR is downloaded and prepared if missing and allowed."""
    opts = self.opts
    _, tfds = import_tf()
    from irevnet_jax.data import tfds_prepare  # pylint: disable=g-import-not-at-top
    if self.spec.kind != 'cifar' or not opts.download:
      return tfds_prepare.open_builder(opts.name, opts.data_dir)
    try:
      return tfds_prepare.prepare(opts.name, opts.data_dir, None)
    except Exception as e:
      raise UserError(
          f'Could not download and prepare {opts.name} into '
          f'{tfds.builder(opts.name, data_dir=opts.data_dir).data_dir}: {e}. On a machine '
          f'without internet access, run `python launch/prepare_data.py --dataset={opts.name} '
          '--data_dir=DIR` elsewhere, copy DIR over and set dataset.data_dir=DIR.') from e

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
    return UserError(f'{field}={split!r} is not a split of {self.opts.name} in '
                     f'{self._builder.data_dir}; available: {available}.{hint}')

  def num_examples(self, split: str) -> int:
    return len(self.data_sources[split])

  def read(self, split: str, keys: np.ndarray) -> np.ndarray:
    """Serialized examples of `keys` (int64 (n,)) in one batched read: object (n,) of bytes.

    One `__getitems__` call per batch: ArrayRecord reads the shards it touches in parallel
    threads (the GIL released), which is what hides an object store's latency."""
    records = self.data_sources[split].__getitems__([int(k) for k in keys])  # checks count
    out = np.empty(len(records), object)
    out[:] = records
    return out

  @staticmethod
  def parse(serialized):
    """A graph function: serialized examples (n,) -> (encoded images (n,), labels int32 (n,))."""
    tf, _ = import_tf()
    features = {'image': tf.io.FixedLenFeature([], tf.string),
                'label': tf.io.FixedLenFeature([], tf.int64)}
    example = tf.io.parse_example(serialized, features)
    return example['image'], tf.cast(example['label'], tf.int32)

  def dataset_options(self):
    """tf.data options: deterministic order; one thread per op, examples in parallel."""
    tf, _ = import_tf()
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    if self.opts.cpu_threads:
      options.threading.private_threadpool_size = self.opts.cpu_threads
    return options
