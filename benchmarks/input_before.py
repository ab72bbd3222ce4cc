"""The ImageNet input pipeline as it was before issue 13 (commit 88c355f), kept only as the
"before" of `benchmarks/input_speed.py`. Not used by training.

Process 0 of 1, default fields: TFRecords read in file order through `builder.as_dataset`,
a 10,000-example shuffle buffer, TensorFlow's `sample_distorted_bounding_box` crop
(area 0.05-1), decode of the crop window, antialiased bilinear resize, flip, float32
images in [0, 1]; eval decodes the whole JPEG, resizes its shorter side to 256 and
centre-crops. Returns tf.data datasets so that the benchmark can set their threads.
"""
import tensorflow as tf
import tensorflow_datasets as tfds


def _read(builder, split: str):
  """(JPEG bytes, label int32) of `split`, in file order."""
  options = tf.data.Options()
  options.deterministic = True
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()},
                          read_config=tfds.ReadConfig(options=options, try_autocache=False))
  return ds.map(lambda ex: (ex['image'], tf.cast(ex['label'], tf.int32)))


def _train_image(encoded, seed, size):
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.io.extract_jpeg_shape(encoded), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), crop_seed,
      min_object_covered=0.05, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.05, 1.0),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
  image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
  image = tf.image.resize(image, size, method='bilinear', antialias=True)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return tf.clip_by_value(image, 0.0, 255.0) / 255.0


def _eval_image(encoded, size, crop_fraction=0.875):
  image = tf.io.decode_jpeg(encoded, channels=3)
  short = int(round(max(size) / crop_fraction))
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  new_hw = tf.maximum(tf.cast(tf.round(hw * short / tf.reduce_min(hw)), tf.int32), short)
  image = tf.image.resize(image, new_hw, method='bilinear', antialias=True)
  top, left = (new_hw[0] - size[0]) // 2, (new_hw[1] - size[1]) // 2
  image = tf.ensure_shape(image[top:top + size[0], left:left + size[1], :], (*size, 3))
  return tf.clip_by_value(image, 0.0, 255.0) / 255.0


def train_dataset(builder, batch: int, size, seed: int = 0, shuffle_buffer: int = 10_000):
  """Endless {'image': float32 (B, H, W, 3), 'label'}: seeded shuffles of the split per epoch."""
  base = _read(builder, 'train')
  steps = builder.info.splits['train'].num_examples // batch

  def epoch(e):
    key = tf.random.stateless_uniform([], tf.stack([tf.constant(seed, tf.int64), e]),
                                      minval=0, maxval=2**31 - 1, dtype=tf.int64)
    ds = base.shuffle(shuffle_buffer, seed=key, reshuffle_each_iteration=False).enumerate()
    ds = ds.take(steps * batch)
    return ds.map(lambda index, example: (tf.stack([key, index]), example))

  def augment(seed_pair, example):
    return {'image': _train_image(example[0], seed_pair, size), 'label': example[1]}

  ds = tf.data.Dataset.range(0, 2**62).flat_map(epoch)
  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(builder, batch: int, size):
  """One pass over 'validation': {'image': float32 (B, H, W, 3), 'label', 'mask'}."""
  def preprocess(encoded, label):
    return {'image': _eval_image(encoded, size), 'label': label,
            'mask': tf.constant(1.0, tf.float32)}
  ds = _read(builder, 'validation').map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
                                        deterministic=True)
  return ds.batch(batch).prefetch(tf.data.AUTOTUNE)
