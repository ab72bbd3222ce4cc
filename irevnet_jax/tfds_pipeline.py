"""TFDS input pipelines for ImageNet (imagenet2012) and CIFAR-10/100, one slice per process.

`get_tfds_source(dataset_config, model_input_shape)` returns a data source for the
training loop (the protocol of `irevnet_jax.input_pipeline`): `train_batches` is an
endless, seeded, resumable iterator and `eval_batches` one padded pass in which every
eval example appears exactly once over all processes. Batches are numpy dicts
{'image': float32 (B, H, W, C), 'label': int32 (B,)} (+ 'mask': float32 (B,) in eval).

TensorFlow is imported only here, lazily, and never sees a GPU or TPU.

Fields of the `dataset` config (only `name` is required):
  name               'imagenet2012' (alias 'imagenet') | 'cifar10' | 'cifar100'.
  data_dir           TFDS data dir; None = TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  manual_dir         ImageNet only: folder holding ILSVRC2012_img_train.tar and
                     ILSVRC2012_img_val.tar; None = <data_dir>/downloads/manual.
                     Used by `prepare` (see launch/prepare_data.py).
  normalization      'unit' (pixels / 255 in [0, 1], the paper) or 'mean_std' (per-channel).
                     Default: 'unit' for ImageNet, 'mean_std' for CIFAR.
  shuffle_buffer     examples in the shuffle buffer. Default 10_000 (ImageNet), 50_000 (CIFAR).
  cache              keep this process's examples (ImageNet: encoded JPEGs) in memory after
                     the first pass. Default False (ImageNet), True (CIFAR).
  download           CIFAR only: download and prepare a missing dataset (default True).
                     ImageNet cannot be downloaded: a missing one raises FileNotFoundError
                     that explains the manual step.
  train_split        default 'train'.
  eval_split         default 'validation' (ImageNet), 'test' (CIFAR).
  crop_area_range    ImageNet train crop area fraction, default (0.05, 1.0).
  crop_aspect_range  ImageNet train crop aspect ratio, default (3/4, 4/3).
  eval_crop_fraction ImageNet eval: resize the shorter side to size / fraction, then
                     centre-crop `size` (default 0.875: 256 -> 224).

Data order: process p of P reads its own contiguous slice of each split. In training each
process holds floor(N / P) examples (the last N mod P of the split are unused) and an
epoch is floor(N / P) // B batches; epoch e is shuffled with a seed derived from
(seed, p, e) and each example is augmented with stateless random ops seeded by
(that seed, its position in the epoch), so starting at step k continues exactly the
batches a run from step 0 yields at step k.
"""
import dataclasses
import os
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')


@dataclasses.dataclass(frozen=True)
class _Spec:
  """What the pipeline needs to know about one TFDS dataset."""
  kind: str                                   # 'imagenet' | 'cifar'
  num_classes: int
  image_shape: Optional[Tuple[int, int, int]]  # None: variable size (resized by the pipeline)
  eval_split: str
  mean: Tuple[float, float, float]            # per channel, in [0, 1] units
  std: Tuple[float, float, float]
  normalization: str
  shuffle_buffer: int
  cache: bool


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPECS = {
    'imagenet2012': _Spec('imagenet', 1000, None, 'validation', _IMAGENET_MEAN, _IMAGENET_STD,
                          'unit', 10_000, False),
    # The released i-RevNet CIFAR code's normalisation constants.
    'cifar10': _Spec('cifar', 10, (32, 32, 3), 'test', (0.4914, 0.4822, 0.4465),
                     (0.2023, 0.1994, 0.2010), 'mean_std', 50_000, True),
    'cifar100': _Spec('cifar', 100, (32, 32, 3), 'test', (0.5071, 0.4865, 0.4409),
                      (0.2673, 0.2564, 0.2762), 'mean_std', 50_000, True),
}


ALIASES = {'imagenet': 'imagenet2012'}
FIELDS = ('name', 'data_dir', 'manual_dir', 'normalization', 'shuffle_buffer', 'cache',
          'download', 'train_split', 'eval_split', 'crop_area_range', 'crop_aspect_range',
          'eval_crop_fraction')


@dataclasses.dataclass(frozen=True)
class Options:
  """The `dataset` config fields, with defaults filled in and checked."""
  name: str
  data_dir: Optional[str]
  manual_dir: Optional[str]
  normalization: str
  shuffle_buffer: int
  cache: bool
  download: bool
  train_split: str
  eval_split: str
  crop_area_range: Tuple[float, float]
  crop_aspect_range: Tuple[float, float]
  eval_crop_fraction: float


def parse_options(dataset_config) -> Options:
  """Reads the `dataset` config (ConfigDict or dict) into `Options`; ValueError on bad fields."""
  get = dataset_config.get
  name = ALIASES.get(get('name', None), get('name', None))
  if name not in SPECS:
    raise ValueError(f'dataset.name={name!r} is not a TFDS dataset this pipeline knows; '
                     f'use one of {sorted(SPECS)} (or "digits" / "synthetic").')
  unknown = sorted(set(dataset_config.keys()) - set(FIELDS))
  if unknown:
    raise ValueError(f'dataset.name={name!r} has no field(s) {unknown}; its fields are '
                     f'{list(FIELDS)}.')
  spec = SPECS[name]
  opts = Options(
      name=name,
      data_dir=_path_or_none(get('data_dir', None)),
      manual_dir=_path_or_none(get('manual_dir', None)),
      normalization=get('normalization', None) or spec.normalization,
      shuffle_buffer=int(get('shuffle_buffer', None) or spec.shuffle_buffer),
      cache=bool(spec.cache if get('cache', None) is None else get('cache', None)),
      download=bool(get('download', True)),
      train_split=str(get('train_split', None) or 'train'),
      eval_split=str(get('eval_split', None) or spec.eval_split),
      crop_area_range=tuple(float(v) for v in (get('crop_area_range', None) or (0.05, 1.0))),
      crop_aspect_range=tuple(float(v) for v in
                              (get('crop_aspect_range', None) or (3 / 4, 4 / 3))),
      eval_crop_fraction=float(get('eval_crop_fraction', None) or 0.875),
  )
  if opts.normalization not in ('unit', 'mean_std'):
    raise ValueError(f'dataset.normalization={opts.normalization!r}: use "unit" ([0, 1], '
                     'as in the paper) or "mean_std" (per-channel mean/std).')
  if opts.shuffle_buffer < 1:
    raise ValueError(f'dataset.shuffle_buffer={opts.shuffle_buffer} must be >= 1, e.g. 10000.')
  lo, hi = opts.crop_area_range
  if len(opts.crop_area_range) != 2 or not 0 < lo <= hi <= 1:
    raise ValueError(f'dataset.crop_area_range={opts.crop_area_range} must be (lo, hi) with '
                     '0 < lo <= hi <= 1, e.g. (0.05, 1.0).')
  lo, hi = opts.crop_aspect_range
  if len(opts.crop_aspect_range) != 2 or not 0 < lo <= hi:
    raise ValueError(f'dataset.crop_aspect_range={opts.crop_aspect_range} must be (lo, hi) '
                     'with 0 < lo <= hi, e.g. (0.75, 1.333).')
  if not 0 < opts.eval_crop_fraction <= 1:
    raise ValueError(f'dataset.eval_crop_fraction={opts.eval_crop_fraction} must be in '
                     '(0, 1], e.g. 0.875.')
  return opts


def _path_or_none(path):
  return None if path in (None, '') else os.path.expanduser(str(path))


def _check_input_shape(name: str, spec: _Spec, input_shape) -> Tuple[int, int, int]:
  """The model's (H, W, C) if this dataset can feed it, else a ValueError naming the field."""
  shape = tuple(int(v) for v in input_shape)
  if spec.image_shape is not None:
    if shape != spec.image_shape:
      raise ValueError(
          f'model.input_shape={shape} does not fit dataset.name={name!r}, whose images are '
          f'{spec.image_shape} and are not resized: set model.input_shape={spec.image_shape} '
          '(e.g. irevnet_jax.presets.cifar10()).')
    return shape
  if len(shape) != 3 or shape[2] != 3 or min(shape[:2]) < 8:
    raise ValueError(
        f'model.input_shape={shape} does not fit dataset.name={name!r}: its RGB images are '
        'cropped and resized to (H, W, 3) with H, W >= 8, e.g. model.input_shape=(224, 224, 3).')
  return shape


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
                           'irevnet_jax.tfds_pipeline could hide it; it would compete with JAX '
                           'for the accelerator. Import this module before using TensorFlow.')
  return tf, tfds


def _builder(opts: Options):
  _, tfds = _tf()
  return tfds.builder(opts.name, data_dir=opts.data_dir)


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
      '  3. Build the TFRecords from one process, before training:\n'
      f'       python launch/prepare_data.py --dataset={opts.name} --data_dir={data_dir} '
      f'--manual_dir={manual}\n'
      '     which runs tfds.builder("imagenet2012", data_dir=DATA_DIR).download_and_prepare('
      'download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR)); the TFDS CLI '
      f'equivalent is `tfds build imagenet2012 --data_dir={data_dir} --manual_dir={manual}` '
      '(TFDS 4.9 needs apache-beam installed for its CLI).\n'
      '  4. Train with dataset.data_dir set to that data dir (see docs/data_and_launch.md).')


def prepare(name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None):
  """Downloads (CIFAR) or builds from the manual tars (ImageNet) the TFDS dataset `name`.

  Run it once, from one process, before training. Returns the TFDS builder.
  """
  opts = parse_options({'name': name, 'data_dir': data_dir, 'manual_dir': manual_dir})
  _, tfds = _tf()
  builder = _builder(opts)
  if builder.is_prepared():
    return builder
  config = tfds.download.DownloadConfig(manual_dir=opts.manual_dir)
  try:
    builder.download_and_prepare(download_config=config)
  except AssertionError as e:  # TFDS's way of saying the manual files are missing
    if SPECS[name].kind == 'imagenet':
      raise FileNotFoundError(imagenet_missing_message(opts, builder.data_dir)) from e
    raise
  return builder


# ---------------------------------------------------------------------------------------------
# Preprocessing (TensorFlow graph functions on one example).

def _normalize(tf, image, spec: _Spec, opts: Options):
  """float32 pixels in [0, 255] -> [0, 1] ('unit') or per-channel standardised ('mean_std')."""
  image = tf.clip_by_value(image, 0.0, 255.0) / 255.0
  if opts.normalization == 'mean_std':
    image = (image - tf.constant(spec.mean)) / tf.constant(spec.std)
  return image


def _imagenet_train(tf, encoded, seed, shape, opts: Options):
  """JPEG bytes -> random crop (area, aspect ranges) resized to (H, W), random flip; [0, 255]."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.io.extract_jpeg_shape(encoded), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), crop_seed,
      min_object_covered=opts.crop_area_range[0], aspect_ratio_range=opts.crop_aspect_range,
      area_range=opts.crop_area_range, max_attempts=10, use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], size[0], size[1]])
  image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
  image = tf.image.resize(image, shape[:2], method='bilinear', antialias=True)
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def _imagenet_eval(tf, encoded, shape, opts: Options):
  """JPEG bytes -> shorter side resized to max(H, W) / fraction -> centre crop (H, W); [0, 255]."""
  image = tf.io.decode_jpeg(encoded, channels=3)
  height, width = shape[:2]
  short = int(round(max(height, width) / opts.eval_crop_fraction))
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = short / tf.reduce_min(hw)
  new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), short)
  image = tf.image.resize(image, new_hw, method='bilinear', antialias=True)
  top = (new_hw[0] - height) // 2
  left = (new_hw[1] - width) // 2
  return tf.ensure_shape(image[top:top + height, left:left + width, :], shape)


def _cifar_train(tf, image, seed, shape):
  """uint8 (32, 32, 3) -> zero-pad 4, random crop back to 32x32, random flip; [0, 255]."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
  image = tf.image.stateless_random_crop(image, shape, crop_seed)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return tf.cast(image, tf.float32)


# ---------------------------------------------------------------------------------------------
# The data source.

def _process_key(seed: int, process_index: int) -> int:
  """A 31-bit key for (seed, process); with the epoch it seeds shuffles and augmentations."""
  words = np.random.SeedSequence([seed % 2**32, process_index]).generate_state(1)
  return int(words[0]) & 0x7FFFFFFF


class TfdsSource:
  """A TFDS dataset as a data source: per-process slices, seeded shuffles, padded eval.

  Attributes: name, input_shape (H, W, C), num_classes, num_train_examples,
  num_eval_examples (whole splits, over all processes).
  """

  def __init__(self, opts: Options, input_shape: Tuple[int, int, int]):
    self.opts = opts
    self.spec = SPECS[opts.name]
    self.name = opts.name
    self.input_shape = input_shape
    self.num_classes = self.spec.num_classes
    self._builder = self._open()
    self._sizes_known = bool(self._builder.info.splits)
    self.num_train_examples = self._count(opts.train_split, 'dataset.train_split')
    self.num_eval_examples = self._count(opts.eval_split, 'dataset.eval_split')
    self._cached = {}

  # -- opening and reading --------------------------------------------------------------------

  def _open(self):
    """The TFDS builder, prepared (CIFAR downloads if allowed) or a clear error."""
    opts = self.opts
    builder = _builder(opts)
    if not builder.is_prepared() and self.spec.kind == 'cifar' and opts.download:
      try:
        builder.download_and_prepare()
      except Exception as e:
        raise RuntimeError(
            f'Could not download and prepare {opts.name} into {builder.data_dir}: {e}. On a '
            f'machine without internet access, run `python launch/prepare_data.py '
            f'--dataset={opts.name} --data_dir=DIR` elsewhere, copy DIR over and set '
            'dataset.data_dir=DIR.') from e
    try:  # Reads nothing; fails if the dataset is not prepared (works under mock_data).
      builder.as_dataset(split=opts.eval_split)
    except AssertionError as e:
      if self.spec.kind == 'imagenet':
        raise FileNotFoundError(imagenet_missing_message(opts, builder.data_dir)) from e
      raise FileNotFoundError(
          f'{opts.name} is not prepared in {builder.data_dir} and dataset.download=False: '
          f'run `python launch/prepare_data.py --dataset={opts.name} --data_dir=DIR` (it '
          'downloads ~170 MB) and set dataset.data_dir=DIR, or set dataset.download=True.') from e
    except ValueError as e:
      raise self._missing_split(builder, opts.eval_split, 'dataset.eval_split') from e
    return builder

  def _missing_split(self, builder, split, field):
    available = sorted(str(s) for s in builder.info.splits)
    hint = ''
    if self.spec.kind == 'imagenet':
      hint = (f' ImageNet splits exist only for the tars that were in the manual dir when it '
              f'was prepared ({", ".join(IMAGENET_TARS)}).')
    return ValueError(f'{field}={split!r} is not a split of {self.name} in {builder.data_dir}; '
                      f'available: {available}.{hint}')

  def _count(self, split: str, field: str) -> int:
    """Examples in `split` (from TFDS metadata, else by the dataset's cardinality)."""
    if self._sizes_known:
      if split not in self._builder.info.splits:
        raise self._missing_split(self._builder, split, field)
      return int(self._builder.info.splits[split].num_examples)
    # No split metadata (e.g. under tfds.testing.mock_data): the reader knows the count.
    count = int(self._builder.as_dataset(split=split).cardinality())
    if count < 0:
      raise ValueError(f'{field}={split!r}: the number of examples of {self.name} is unknown.')
    return count

  def _read(self, split: str, start: int, stop: int):
    """Examples [start, stop) of `split`, in file order, as (image, label int32)."""
    tf, tfds = _tf()
    decoders = {'image': tfds.decode.SkipDecoding()} if self.spec.kind == 'imagenet' else None
    options = tf.data.Options()
    options.deterministic = True
    read_config = tfds.ReadConfig(options=options, try_autocache=False)
    if self._sizes_known:  # TFDS reads only the files that hold [start, stop).
      ds = self._builder.as_dataset(
          split=tfds.core.ReadInstruction(split, from_=start, to=stop, unit='abs'),
          shuffle_files=False, decoders=decoders, read_config=read_config)
    else:
      ds = self._builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                                    read_config=read_config)
      ds = ds.skip(start).take(stop - start)
    return ds.map(lambda ex: (ex['image'], tf.cast(ex['label'], tf.int32)))

  def _base(self, key, split: str, start: int, stop: int):
    """`_read`, kept in memory (encoded) across epochs and passes when dataset.cache is set."""
    if not self.opts.cache:
      return self._read(split, start, stop)
    if key not in self._cached:
      self._cached[key] = self._read(split, start, stop).cache()
    return self._cached[key]

  # -- training -------------------------------------------------------------------------------

  def train_steps_per_epoch(self, local_batch_size: int, process_count: int) -> int:
    """Batches per epoch of each process: (N // process_count) // local_batch_size."""
    return (self.num_train_examples // process_count) // local_batch_size

  def _check_process(self, local_batch_size, process_index, process_count):
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index} must be in [0, process_count='
                       f'{process_count}).')
    if local_batch_size < 1:
      raise ValueError(f'local_batch_size={local_batch_size} must be >= 1.')

  def train_batches(self, local_batch_size: int, process_index: int, process_count: int,
                    seed: int, start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
    """Endless {'image': float32 (B, H, W, C), 'label': int32 (B,)}; step k is the same batch
    whether the iterator starts at 0 or at start_step <= k."""
    self._check_process(local_batch_size, process_index, process_count)
    per_process = self.num_train_examples // process_count
    steps = self.train_steps_per_epoch(local_batch_size, process_count)
    if steps < 1:
      raise ValueError(
          f'batch_size: local batch {local_batch_size} is larger than the {per_process} '
          f'{self.name} training examples of each of {process_count} processes.')
    if start_step < 0:
      raise ValueError(f'start_step={start_step} must be >= 0.')

    tf, _ = _tf()
    first_epoch, skip = divmod(start_step, steps)
    start = process_index * per_process
    base = self._base(('train', start, per_process), self.opts.train_split, start,
                      start + per_process)
    process_key = _process_key(seed, process_index)
    buffer_size, batch = self.opts.shuffle_buffer, local_batch_size

    def epoch(e):
      """Epoch e: a seeded shuffle of this process's slice, cut to whole batches."""
      key = tf.random.stateless_uniform([], tf.stack([tf.constant(process_key, tf.int64), e]),
                                        minval=0, maxval=2**31 - 1, dtype=tf.int64)
      ds = base.shuffle(buffer_size, seed=key, reshuffle_each_iteration=False).enumerate()
      done = tf.where(e == first_epoch, tf.constant(skip * batch, tf.int64), 0)
      ds = ds.skip(done).take(steps * batch - done)
      return ds.map(lambda index, example: (tf.stack([key, index]), example))

    ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch)
    shape, spec, opts = self.input_shape, self.spec, self.opts

    def augment(seed_pair, example):
      image, label = example
      if spec.kind == 'imagenet':
        image = _imagenet_train(tf, image, seed_pair, shape, opts)
      else:
        image = _cifar_train(tf, image, seed_pair, shape)
      return {'image': _normalize(tf, image, spec, opts), 'label': label}

    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()

  # -- evaluation -----------------------------------------------------------------------------

  def eval_num_batches(self, local_batch_size: int, process_count: int) -> int:
    """Batches every process yields in one eval pass: ceil(ceil(N / P) / B)."""
    per_process = -(-self.num_eval_examples // process_count)
    return -(-per_process // local_batch_size)

  def eval_batches(self, local_batch_size: int, process_index: int,
                   process_count: int) -> Iterator[Dict[str, np.ndarray]]:
    """One pass over this process's slice of the eval split: {'image', 'label', 'mask'};
    padding examples (zeros) have mask 0 and fill every process to the same batch count."""
    self._check_process(local_batch_size, process_index, process_count)
    tf, _ = _tf()
    total = self.num_eval_examples
    start = process_index * total // process_count
    stop = (process_index + 1) * total // process_count
    num_batches = self.eval_num_batches(local_batch_size, process_count)
    shape, spec, opts = self.input_shape, self.spec, self.opts

    def preprocess(image, label):
      if spec.kind == 'imagenet':
        image = _imagenet_eval(tf, image, shape, opts)
      else:
        image = tf.cast(image, tf.float32)
      return {'image': _normalize(tf, image, spec, opts), 'label': label,
              'mask': tf.constant(1.0, tf.float32)}

    padding = tf.data.Dataset.from_tensors({
        'image': tf.zeros(shape, tf.float32), 'label': tf.constant(0, tf.int32),
        'mask': tf.constant(0.0, tf.float32)}).repeat(num_batches * local_batch_size
                                                      - (stop - start))
    if stop > start:
      ds = self._base(('eval', start, stop), opts.eval_split, start, stop)
      ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      ds = ds.concatenate(padding)
    else:
      ds = padding
    ds = ds.batch(local_batch_size).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()


def get_tfds_source(dataset_config, model_input_shape) -> TfdsSource:
  """The data source for `dataset_config` (see the module docstring for its fields).

  Raises ValueError if `model_input_shape` (model.input_shape) does not fit the dataset,
  FileNotFoundError if the dataset is not prepared (with the steps that prepare it).
  """
  opts = parse_options(dataset_config)
  shape = _check_input_shape(opts.name, SPECS[opts.name], model_input_shape)
  return TfdsSource(opts, shape)
