"""TFDS input pipelines for ImageNet (imagenet2012) and CIFAR-10/100: a global shuffle in
the arithmetic data order, and padded exactly-once evaluation.

`TfdsSource(tfds_options.parse_options(dataset_config, model_input_shape))` is a data
source for the training loop (the protocol of `irevnet_jax.data.input_pipeline`): `train_batches` is an
endless, seeded iterator that can start at any step, and `eval_batches` one padded pass
in which every eval example appears exactly once over all processes. Batches are numpy:
  train: {'image': uint8 (B, H, W, C), 'label': int32 (B,)}
  eval:  the same + 'mask': float32 (B,) (0 = padding) + 'index': int32 (B,) (the
         example's position in the eval split, -1 = padding).
Images are not normalised here: the model's input is
`(image.astype(float32) - source.pixel_mean) / source.pixel_std`, computed on the device.

Records come from `irevnet_jax.data.tfds_records` (one batched ArrayRecord read per step,
TensorFlow without accelerators; `prepare` too). The order of training records is
`irevnet_jax.data.data_order`: each epoch a new permutation of the whole split from
(seed, epoch); global batch s is positions [s * G, (s + 1) * G) of the stream of epochs
and process p reads rows [p * B, (p + 1) * B) of it. Each example is augmented with
stateless random ops seeded by (seed, epoch, its key), on TensorFlow's CPU threads
(tf.data, deterministic order; `tfds_augment`). Resuming at step s computes the keys of
step s: no record before it is read.

Fields of the `dataset` config: `irevnet_jax.data.tfds_options` and docs/data_and_launch.md
(only `name` is required; None means the default).
"""
import itertools
from typing import Dict, Iterator

import numpy as np

from irevnet_jax.data import data_order
from irevnet_jax.data.tfds_options import SPECS, Options
from irevnet_jax.data.tfds_records import TfdsRecords, import_tf
from irevnet_jax.errors import UserError

__all__ = ['TfdsSource']


class TfdsSource:
  """A TFDS dataset as a data source: a global shuffle, padded exactly-once eval.

  Attributes: name, input_shape (H, W, C), num_classes, num_train_examples,
  num_eval_examples (whole splits), pixel_mean and pixel_std (C floats, uint8 units),
  records (`TfdsRecords`) and its data_sources {split: random-access sequence of
  serialized examples}.
  """

  def __init__(self, opts: Options):
    """`opts`: `tfds_options.parse_options` of the `dataset` config with the model's input
    shape (the images' shape here). Raises UserError, with the steps that prepare it, if
    the dataset is not prepared."""
    if opts.input_shape is None:
      raise UserError('TfdsSource needs the model input shape: '
                      'tfds_options.parse_options(dataset_config, model_input_shape).')
    self.opts = opts
    self.spec = SPECS[opts.name]
    self.name = opts.name
    self.input_shape = opts.input_shape
    self.num_classes = self.spec.num_classes
    self.pixel_mean, self.pixel_std = opts.pixel_mean, opts.pixel_std
    self.pixel_max = 255.0
    self.records = TfdsRecords(opts)
    self.data_sources = self.records.data_sources
    self.num_train_examples = len(self.data_sources[opts.train_split])
    self.num_eval_examples = len(self.data_sources[opts.eval_split])

  # -- training -------------------------------------------------------------------------------

  def _check_process(self, local_batch_size, process_index, process_count):
    if process_count < 1 or not 0 <= process_index < process_count:
      raise UserError(f'process_index={process_index} must be in [0, process_count='
                      f'{process_count}).')
    if local_batch_size < 1:
      raise UserError(f'local_batch_size={local_batch_size} must be >= 1.')

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
      raise UserError(
          f'batch_size: the global batch {global_batch} is larger than the '
          f'{self.num_train_examples} {self.name} training examples.')
    if start_step < 0:
      raise UserError(f'start_step={start_step} must be >= 0.')
    tf, _ = import_tf()
    order = data_order.TrainOrder(self.num_train_examples, seed, global_batch)
    first_row = process_index * local_batch_size

    split = self.opts.train_split

    def steps():   # one batched read per step, ahead of the augmentation (prefetch below)
      for step in itertools.count(start_step):
        keys, seeds = order.rows(step, first_row, local_batch_size)
        yield self.records.read(split, keys), seeds

    def example(encoded, label, seed_pair):
      return {'image': self._augment(encoded, seed_pair), 'label': label}

    ds = tf.data.Dataset.from_generator(steps, output_signature=(
        tf.TensorSpec((local_batch_size,), tf.string),
        tf.TensorSpec((local_batch_size, 2), tf.int64)))
    ds = ds.prefetch(2).map(lambda serialized, seeds: (*self.records.parse(serialized), seeds))
    ds = ds.unbatch().map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(self.records.dataset_options()).as_numpy_iterator()

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
    tf, _ = import_tf()
    total = self.num_eval_examples
    start = process_index * total // process_count
    stop = (process_index + 1) * total // process_count
    num_batches = self.eval_num_batches(local_batch_size, process_count)
    split = self.opts.eval_split

    def chunks():   # one batched read per batch of this process's slice
      for first in range(start, stop, local_batch_size):
        keys = np.arange(first, min(first + local_batch_size, stop), dtype=np.int64)
        yield self.records.read(split, keys), keys.astype(np.int32)

    def example(encoded, label, index):
      return {'image': self._preprocess_eval(encoded), 'label': label,
              'mask': tf.constant(1.0, tf.float32), 'index': index}

    padding = tf.data.Dataset.from_tensors({
        'image': tf.zeros(self.input_shape, tf.uint8), 'label': tf.constant(0, tf.int32),
        'mask': tf.constant(0.0, tf.float32), 'index': tf.constant(-1, tf.int32),
    }).repeat(num_batches * local_batch_size - (stop - start))
    ds = tf.data.Dataset.from_generator(chunks, output_signature=(
        tf.TensorSpec((None,), tf.string), tf.TensorSpec((None,), tf.int32)))
    ds = ds.prefetch(2).map(lambda serialized, index: (*self.records.parse(serialized), index))
    ds = ds.unbatch().map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.concatenate(padding).batch(local_batch_size).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(self.records.dataset_options()).as_numpy_iterator()
