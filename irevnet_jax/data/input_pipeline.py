"""Data sources for training and evaluation: digits, synthetic, and the dispatch to TFDS.

Every source follows the `DataSource` protocol below. Batches are numpy arrays
for this process only: with P processes, process p yields rows
[p * B_local, (p + 1) * B_local) of each global batch, so that a run on one
process and a run on several see the same global batches.

    source = get_source(config.dataset, model_input_shape=(8, 8, 1))
    for batch in source.train_batches(64, 0, 1, seed=0, start_step=0):
      batch['image']  # uint8 (64, 8, 8, 1) pixels
      batch['label']  # int32 (64,)
    x = (batch['image'] - source.pixel_mean) / source.pixel_std   # the model's input

Images stay uint8 up to the device (a quarter of float32's bytes to move); the
training step normalises them there with the source's `pixel_mean` / `pixel_std`.

TensorFlow is imported only for TFDS names (`irevnet_jax.data.tfds_pipeline`).
"""
from typing import Iterator, Protocol, Tuple

import numpy as np

from irevnet_jax.data import data_order, tfds_options   # no TensorFlow
from irevnet_jax.errors import UserError

# Names served by `irevnet_jax.data.tfds_pipeline` (imported lazily: it needs TensorFlow).
TFDS_NAMES = (*tfds_options.SPECS, *tfds_options.ALIASES)
LOCAL_NAMES = ('digits', 'synthetic')


class DataSource(Protocol):
  """What the training loop reads batches from."""
  name: str
  input_shape: Tuple[int, int, int]   # (H, W, C) of the images it yields
  num_classes: int
  num_train_examples: int
  num_eval_examples: int
  pixel_mean: Tuple[float, ...]       # per channel, in pixel units: the model's input is
  pixel_std: Tuple[float, ...]        # (image - pixel_mean) / pixel_std
  pixel_max: float                    # the brightest pixel value (255; digits: 16), for
                                      # showing images; optional, 255 where missing

  def train_batches(self, local_batch_size: int, process_index: int, process_count: int,
                    seed: int, start_step: int) -> Iterator[dict]:
    """Endless iterator of {'image': uint8 (B, H, W, C), 'label': int32 (B,)} for this
    process; deterministic in (seed, step): starting at start_step yields exactly the
    batches a run from step 0 would have yielded from that step on."""

  def eval_batches(self, local_batch_size: int, process_index: int,
                   process_count: int) -> Iterator[dict]:
    """One pass over the eval split: {'image', 'label', 'mask' float32 (B,), 'index' int32
    (B,)}; `index` numbers the examples of the split (-1 for padding); the last batch is
    padded (mask 0); over all processes every eval example appears exactly once with mask
    1, and every process yields the same number of batches."""


def normalized(batches: Iterator[dict], source) -> Iterator[dict]:
  """`batches` with 'image' as the model's float32 input, (image - pixel_mean) / pixel_std,
  on the host (the training step does the same on the device)."""
  mean = np.asarray(source.pixel_mean, np.float32)
  std = np.asarray(source.pixel_std, np.float32)
  for batch in batches:
    yield dict(batch, image=(np.asarray(batch['image'], np.float32) - mean) / std)


class ArraySource:
  """A source over in-memory arrays: images uint8 (N, H, W, C), labels int (N,).

  Training reads `data_order`'s order, as the TFDS sources do: an endless stream of
  epochs, each a fresh permutation drawn from (seed, epoch); global batch s is positions
  [s * G, (s + 1) * G) of that stream (G = local batch x process count), so any step is
  reachable directly.
  """

  def __init__(self, name, train_images, train_labels, eval_images, eval_labels,
               num_classes, pixel_mean, pixel_std, pixel_max=255.0):
    self.name = name
    self._train = (np.asarray(train_images, np.uint8), np.asarray(train_labels, np.int32))
    self._eval = (np.asarray(eval_images, np.uint8), np.asarray(eval_labels, np.int32))
    self.pixel_mean = tuple(float(m) for m in pixel_mean)
    self.pixel_std = tuple(float(s) for s in pixel_std)
    self.pixel_max = float(pixel_max)
    self.input_shape = tuple(self._train[0].shape[1:])
    self.num_classes = int(num_classes)
    self.num_train_examples = len(self._train[1])
    self.num_eval_examples = len(self._eval[1])

  def train_batches(self, local_batch_size, process_index, process_count, seed, start_step):
    images, labels = self._train
    order = data_order.TrainOrder(len(labels), seed, local_batch_size * process_count)
    step = start_step
    while True:
      index, _ = order.rows(step, process_index * local_batch_size, local_batch_size)
      yield {'image': images[index], 'label': labels[index]}
      step += 1

  def eval_batches(self, local_batch_size, process_index, process_count):
    images, labels = self._eval
    n = len(labels)
    global_batch = local_batch_size * process_count
    for start in range(0, n, global_batch):
      first = start + process_index * local_batch_size
      positions = np.arange(first, first + local_batch_size)
      valid = positions < n
      index = np.where(valid, positions, 0)
      image = images[index] * valid[:, None, None, None].astype(np.uint8)
      yield {'image': image, 'label': labels[index] * valid,
             'mask': valid.astype(np.float32),
             'index': np.where(valid, positions, -1).astype(np.int32)}


# scikit-learn's 8x8 digits: 1,797 images, pixel values 0..16.
DIGITS_EVAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def digits_source() -> ArraySource:
  """scikit-learn's bundled 8x8 handwritten digits, shape (8, 8, 1): uint8 values 0..16,
  normalised to [0, 1] (pixel_std 16).

  Fixed split: within each class, a shuffle with numpy seed 0 holds out
  round(20%) of its images for evaluation: 359 eval and 1,438 train images,
  the same on every machine.
  """
  from sklearn import datasets  # bundled with scikit-learn: no download
  digits = datasets.load_digits()
  images = digits.images.astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  rng = np.random.default_rng(DIGITS_SPLIT_SEED)
  eval_index = []
  for c in range(10):
    members = rng.permutation(np.flatnonzero(labels == c))
    eval_index.extend(members[:int(round(len(members) * DIGITS_EVAL_FRACTION))])
  eval_mask = np.zeros(len(labels), bool)
  eval_mask[eval_index] = True
  train_index = rng.permutation(np.flatnonzero(~eval_mask))
  eval_index = np.sort(np.flatnonzero(eval_mask))
  return ArraySource('digits', images[train_index], labels[train_index],
                     images[eval_index], labels[eval_index], num_classes=10,
                     pixel_mean=(0.0,), pixel_std=(16.0,), pixel_max=16.0)


class SyntheticSource:
  """Random uint8 images of the model's input shape (normalised to [0, 1]) and random
  labels, for benchmarks and tests.

  Training cycles through a small pool of batches drawn once per (seed,
  process), so producing a batch costs nothing; there is nothing to learn.
  """
  POOL = 4

  def __init__(self, input_shape, num_classes, num_train_examples, num_eval_examples):
    self.name = 'synthetic'
    self.input_shape = tuple(int(d) for d in input_shape)
    self.num_classes = int(num_classes)
    self.num_train_examples = int(num_train_examples)
    self.num_eval_examples = int(num_eval_examples)
    self.pixel_mean = (0.0,) * self.input_shape[-1]
    self.pixel_std = (255.0,) * self.input_shape[-1]
    self.pixel_max = 255.0

  def _random_batch(self, rng, size):
    return {'image': rng.integers(0, 256, (size, *self.input_shape), dtype=np.uint8),
            'label': rng.integers(0, self.num_classes, size, dtype=np.int32)}

  def train_batches(self, local_batch_size, process_index, process_count, seed, start_step):
    rng = np.random.default_rng([seed, process_index, local_batch_size])
    pool = [self._random_batch(rng, local_batch_size) for _ in range(self.POOL)]
    step = start_step
    while True:
      yield pool[step % self.POOL]
      step += 1

  def eval_batches(self, local_batch_size, process_index, process_count):
    global_batch = local_batch_size * process_count
    for index, start in enumerate(range(0, self.num_eval_examples, global_batch)):
      rng = np.random.default_rng([1, index, process_index])
      batch = self._random_batch(rng, local_batch_size)
      positions = np.arange(start + process_index * local_batch_size,
                            start + (process_index + 1) * local_batch_size)
      valid = positions < self.num_eval_examples
      batch['mask'] = valid.astype(np.float32)
      batch['index'] = np.where(valid, positions, -1).astype(np.int32)
      yield batch


# Fields the synthetic source understands (beyond `name`) and their defaults; others are typos.
SYNTHETIC_FIELDS = {'num_classes': None, 'num_train_examples': 1_281_167,
                    'num_eval_examples': 1024}
# Every dataset field some source reads, with its type.
DATASET_FIELDS = {**tfds_options.FIELDS, **{field: int for field in SYNTHETIC_FIELDS}}


def _check_fields(dataset_config):
  """Rejects dataset fields that no source reads (typos). Fields of other sources are
  allowed, so that `--config.dataset.name=synthetic` works on an ImageNet config."""
  unknown = sorted(set(dataset_config.keys()) - set(DATASET_FIELDS))
  if unknown:
    raise UserError(
        f'dataset has no field(s) {unknown}; dataset fields are {sorted(DATASET_FIELDS)}.')


def get_source(dataset_config, model_input_shape, model_num_classes=None) -> DataSource:
  """The `DataSource` named by `dataset_config.name`, checked against the model.

  `model_input_shape` (H, W, C): synthetic images take it; TFDS sources resize
  to it; digits must match it (8, 8, 1). With `model_num_classes`, every model field
  that does not fit a TFDS dataset is named before TensorFlow loads
  (`tfds_options.parse_options`), and a dataset with more classes than the model is
  refused. UserError naming the fix.
  """
  name = dataset_config.get('name', None)
  model_input_shape = tuple(int(d) for d in model_input_shape)
  _check_fields(dataset_config)
  source = _open_source(name, dataset_config, model_input_shape, model_num_classes)
  if model_num_classes is not None and source.num_classes > model_num_classes:
    hint = f' or dataset.num_classes={model_num_classes}' if name == 'synthetic' else ''
    raise UserError(f'dataset.name={name!r} has {source.num_classes} classes, the model '
                    f'{model_num_classes}; set model.num_classes={source.num_classes}{hint}.')
  return source


def _open_source(name, dataset_config, model_input_shape, model_num_classes) -> DataSource:
  if name == 'digits':
    source = digits_source()
  elif name == 'synthetic':
    fields = {k: (dataset_config.get(k, None) or v) for k, v in SYNTHETIC_FIELDS.items()}
    source = SyntheticSource(model_input_shape, fields['num_classes'] or 10,
                             fields['num_train_examples'], fields['num_eval_examples'])
  elif name in TFDS_NAMES:
    tfds_fields = {k: v for k, v in dataset_config.items() if k in tfds_options.FIELDS}
    opts = tfds_options.parse_options(tfds_fields, model_input_shape, model_num_classes)
    from irevnet_jax.data import tfds_pipeline  # pylint: disable=g-import-not-at-top
    return tfds_pipeline.TfdsSource(opts)   # TensorFlow loads only there
  else:
    raise UserError(
        f'Unknown dataset.name={name!r}; known names are {list(LOCAL_NAMES + TFDS_NAMES)} '
        f'(e.g. {tfds_options.flag("name=digits")}).')
  if source.input_shape != model_input_shape:
    raise UserError(
        f'dataset.name={name!r} yields images of shape {source.input_shape}, but '
        f'model.input_shape={model_input_shape}; set model.input_shape={source.input_shape}.')
  return source
