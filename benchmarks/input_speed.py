"""ImageNet input pipeline throughput: train and eval images/s per CPU core.

    python -m benchmarks.input_speed                    # ~2 min on 2 cores
    python -m benchmarks.input_speed --threads=1 --timed_images=1024

Makes an ImageNet-like data set (noisy crops of scikit-learn's sample photos, ~400 x 350
px, ~110 KB JPEGs, in fake ILSVRC2012 tars prepared by TFDS in ArrayRecord, and a copy
with the shorter side shrunk to --short_side) and times `irevnet_jax.data.tfds_pipeline`
on both with the dataset fields of --config. "per core": images per CPU-second of this
process, which other jobs distort less than a wall-clock rate; "cores busy": CPU s per
wall s; each row the best (fewest CPU seconds) of --repeats runs.
"""
import argparse
import importlib
import io
import os
import tarfile
import tempfile
import time

import numpy as np

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from irevnet_jax.data import tfds_options, tfds_pipeline, tfds_records  # noqa: E402  (hides accelerators from TF)

SYNSETS = ('n01440764', 'n01443537', 'n01484850', 'n01491361')   # labels 0-3 of imagenet2012


def imagenet_like_jpegs(count: int, seed: int):
  """`count` JPEGs of about 350 x 400 pixels and ~110 KB: noisy crops of sklearn's photos."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = load_sample_images().images            # two 427 x 640 RGB photos
  rng = np.random.default_rng(seed)
  jpegs = []
  for k in range(count):
    photo = photos[k % len(photos)]
    height, width = int(rng.integers(300, 400)), int(rng.integers(340, 460))
    top = int(rng.integers(0, photo.shape[0] - height + 1))
    left = int(rng.integers(0, photo.shape[1] - width + 1))
    crop = photo[top:top + height, left:left + width].astype(np.float32)
    crop += rng.normal(0.0, 8.0, crop.shape)
    image = np.clip(np.round(crop), 0, 255).astype(np.uint8)
    jpegs.append(tf.io.encode_jpeg(image, quality=97).numpy())
  return jpegs


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_tars(manual_dir: str, train, val) -> None:
  """ILSVRC2012_img_{train,val}.tar as TFDS expects them (train: one inner tar per synset)."""
  with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_train.tar'), 'w') as outer:
    for c, synset in enumerate(SYNSETS):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as sub:
        for k in range(c, len(train), len(SYNSETS)):
          _add(sub, f'{synset}_{k}.JPEG', train[k])
      _add(outer, f'{synset}.tar', inner.getvalue())
  with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_val.tar'), 'w') as outer:
    for i, data in enumerate(val, start=1):
      _add(outer, f'ILSVRC2012_val_{i:08d}.JPEG', data)


def make_dataset(root: str, num_train: int, num_val: int, short_side: int):
  """(data dir prepared in ArrayRecord, data dir of the small copy or None)."""
  from irevnet_jax.data import tfds_prepare  # pylint: disable=g-import-not-at-top
  manual = os.path.join(root, 'manual')
  os.makedirs(manual)
  jpegs = imagenet_like_jpegs(num_train + num_val, seed=0)
  sizes = [len(j) for j in jpegs]
  print(f'{len(jpegs)} JPEGs, {np.mean(sizes) / 1e3:.0f} KB on average '
        f'({min(sizes) / 1e3:.0f}-{max(sizes) / 1e3:.0f} KB), ~350 x 400 pixels')
  write_tars(manual, jpegs[:num_train], jpegs[num_train:])
  data_dir = os.path.join(root, 'data')
  builder = tfds_records.prepare('imagenet2012', data_dir, manual)
  small_dir = None
  if short_side:
    small_dir = os.path.join(root, f'data_{short_side}')
    tfds_prepare.write_small_copy(builder, small_dir, short_side)
  return data_dir, small_dir


def time_batches(make_batches, batch_size: int, timed_images: int, repeats: int, warmup: int = 2):
  """(images, wall s, CPU s) of the best of `repeats` runs (fewest CPU s), each over whole
  batches of a fresh iterator after `warmup` untimed ones."""
  runs, steps = [], max(1, timed_images // batch_size)
  for _ in range(repeats):
    batches = make_batches()
    for _ in range(warmup):
      next(batches)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
      next(batches)
    runs.append((steps * batch_size, time.perf_counter() - wall, time.process_time() - cpu))
  return min(runs, key=lambda run: run[2])


def pipeline_rows(label: str, data_dir: str, args):
  """`irevnet_jax.data.tfds_pipeline` with the dataset fields of --config, on data_dir."""
  config = importlib.import_module(f'experiments.configs.{args.config}').get_config()
  dataset = {k: v for k, v in config.dataset.items() if k in tfds_options.FIELDS}
  dataset.update(data_dir=data_dir, cpu_threads=args.threads)
  source = tfds_pipeline.TfdsSource(
      tfds_options.parse_options(dataset, (args.size, args.size, 3)))
  yield label, 'train', time_batches(lambda: source.train_batches(args.batch, 0, 1, seed=0),
                                     args.batch, args.timed_images, args.repeats)
  yield label, 'eval', time_batches(lambda: source.eval_batches(args.batch, 0, 1),
                                    args.batch, args.eval_images - 2 * args.batch, args.repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='bijective_released', help='dataset fields of it')
  parser.add_argument('--threads', type=int, default=0, help='tf.data threads (0: per core)')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--train_images', type=int, default=512, help='JPEGs in the train split')
  parser.add_argument('--eval_images', type=int, default=1024,
                      help='JPEGs in the val split; one pass, less 2 warm-up batches, is timed')
  parser.add_argument('--timed_images', type=int, default=1536, help='train images per run')
  parser.add_argument('--repeats', type=int, default=3, help='runs per row; the best is shown')
  parser.add_argument('--short_side', type=int, default=256, help='small copy; 0: none')
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as root:
    data_dir, small_dir = make_dataset(root, args.train_images, args.eval_images,
                                       args.short_side)
    rows = list(pipeline_rows('ArrayRecord, batched reads', data_dir, args))
    if small_dir:
      rows += pipeline_rows(f'the same, copy <= {args.short_side} px', small_dir, args)
  load = ', '.join(f'{v:.1f}' for v in os.getloadavg())
  print(f'\n{os.cpu_count()} cores (load average {load}), --threads={args.threads}, '
        f'batch {args.batch}, {args.size} x {args.size}, '
        f'experiments/configs/{args.config}.py fields\n')
  print('| pipeline | split | images | wall s | images/s | cores busy | images/s per core |')
  print('|---|---|---|---|---|---|---|')
  for label, split, (images, wall, cpu) in rows:
    print(f'| {label} | {split} | {images} | {wall:.2f} | {images / wall:.0f} | '
          f'{cpu / wall:.2f} | {images / cpu:.0f} |')


if __name__ == '__main__':
  main()
