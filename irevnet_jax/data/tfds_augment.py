"""Image augmentation for the TFDS pipelines: TensorFlow graph functions on one example.

Imported only by `irevnet_jax.data.tfds_pipeline`, after `tfds_records.import_tf` has hidden
the accelerators from TensorFlow. Every random choice is a stateless op of the example's seed (int64 (2,)), so
an example's augmentation is a function of (run seed, epoch, example) alone. Images stay
uint8 except between the resize and the final rounding, and only the crop window of a
JPEG is decoded.

Colour jitter follows torchvision's `ColorJitter` (the released i-RevNet script's):
brightness, contrast, saturation and hue, each applied with probability 1 when its
strength is > 0, in a random order per image, with factors drawn uniformly from
[max(0, 1 - s), 1 + s] (brightness, contrast, saturation) and a hue shift from [-h, h]
turns. The ops are torchvision's, not TensorFlow's namesakes, which differ:
  brightness  x * f                      (tf.image.adjust_brightness adds a delta)
  contrast    f * x + (1 - f) * mean(gray(x))  (tf.image.adjust_contrast uses per-channel means)
  saturation  f * x + (1 - f) * gray(x)  (tf.image.adjust_saturation scales S in HSV space)
  hue         rotate the hue by the shift in HSV space (tf.image.adjust_hue, as torchvision)
with gray = 0.299 R + 0.587 G + 0.114 B and a clip to [0, 255] after each op. What still
differs from torchvision on PIL images: the ops run on float32 pixels and round to uint8
once at the end (PIL rounds after every op), PIL's hue shift works on 8-bit HSV values
(steps of 1/256 turn), and shrinking averages over each output pixel's footprint (a box
filter) where PIL's bilinear resize uses a triangle filter. The flip, jitter and rounding of
each image run as one XLA-compiled function (`flip_jitter_round`).
"""
import functools
import math
from typing import Sequence, Tuple

import numpy as np
import tensorflow as tf

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
JITTER_OPS = ('brightness', 'contrast', 'saturation', 'hue')


# ---------------------------------------------------------------------------------------------
# Crop windows: (top, left, height, width), int32 scalars, inside an image of `image_hw`.

def inception_window(image_hw, seed, area_range, aspect_range):
  """TensorFlow's `sample_distorted_bounding_box` (the Inception / RevNet code's crop).

  Aspect ratio uniform in aspect_range, height uniform among those that give an area in
  area_range; after 100 failed attempts, the whole image.
  """
  shape = tf.concat([image_hw, [3]], axis=0)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed,
      min_object_covered=area_range[0], aspect_ratio_range=aspect_range,
      area_range=area_range, max_attempts=100, use_image_if_no_bounding_boxes=True)
  return begin[0], begin[1], size[0], size[1]


def torchvision_window(image_hw, seed, area_range, aspect_range, attempts: int = 10):
  """torchvision's `RandomResizedCrop` window.

  Up to 10 attempts: area uniform in area_range (fraction of the image), aspect ratio
  log-uniform in aspect_range, kept if it fits; the position is then uniform. If none
  fits: the centred crop of the whole image clamped to the aspect range.
  """
  area_seed, ratio_seed, top_seed, left_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  height = tf.cast(image_hw[0], tf.float32)
  width = tf.cast(image_hw[1], tf.float32)
  area = height * width * tf.random.stateless_uniform(
      [attempts], area_seed, area_range[0], area_range[1])
  ratio = tf.exp(tf.random.stateless_uniform(
      [attempts], ratio_seed, math.log(aspect_range[0]), math.log(aspect_range[1])))
  crop_w = tf.round(tf.sqrt(area * ratio))
  crop_h = tf.round(tf.sqrt(area / ratio))
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32))
  image_ratio = width / height
  fallback_w = tf.where(image_ratio > aspect_range[1],
                        tf.round(height * aspect_range[1]), width)
  fallback_h = tf.where(image_ratio < aspect_range[0],
                        tf.round(width / aspect_range[0]), height)
  found = tf.reduce_any(fits)
  crop_h = tf.where(found, crop_h[first], fallback_h)
  crop_w = tf.where(found, crop_w[first], fallback_w)
  top = tf.where(found, tf.floor(tf.random.stateless_uniform([], top_seed) *
                                 (height - crop_h + 1)), tf.floor((height - crop_h) / 2))
  left = tf.where(found, tf.floor(tf.random.stateless_uniform([], left_seed) *
                                  (width - crop_w + 1)), tf.floor((width - crop_w) / 2))
  return tuple(tf.cast(v, tf.int32) for v in (top, left, crop_h, crop_w))


CROP_SAMPLERS = {'inception': inception_window, 'torchvision': torchvision_window}


def eval_window(image_hw, size: Tuple[int, int], crop_fraction: float):
  """The window that "resize the shorter side to max(H, W) / crop_fraction, then take the
  centre H x W" keeps, in the original image's pixels (decoded and resized directly)."""
  height = tf.cast(image_hw[0], tf.float32)
  width = tf.cast(image_hw[1], tf.float32)
  scale = (max(size) / crop_fraction) / tf.minimum(height, width)
  crop_h = tf.clip_by_value(tf.round(size[0] / scale), 1.0, height)
  crop_w = tf.clip_by_value(tf.round(size[1] / scale), 1.0, width)
  top = tf.floor((height - crop_h) / 2)
  left = tf.floor((width - crop_w) / 2)
  return tuple(tf.cast(v, tf.int32) for v in (top, left, crop_h, crop_w))


# ---------------------------------------------------------------------------------------------
# Decoding and resizing.

def decode_window(encoded, window):
  """JPEG bytes -> uint8 (h, w, 3) of the window only (the rest is never decoded to pixels)."""
  return tf.io.decode_and_crop_jpeg(encoded, tf.stack(window), channels=3)


def resize(image, size: Tuple[int, int]):
  """uint8 or float (h, w, 3) -> float32 (H, W, 3) in the input's range.

  Each axis that shrinks is averaged over each output pixel's footprint (TF's 'area':
  antialiased, a box filter where PIL's bilinear uses a triangle, at a fifth of the cost of
  TF's antialiased bilinear); what is left to enlarge is interpolated bilinearly.
  """
  hw = tf.shape(image)[:2]
  shrunk = tf.minimum(hw, size)
  image = tf.cond(tf.reduce_any(hw > size),
                  lambda: tf.image.resize(image, shrunk, 'area'),
                  lambda: tf.cast(image, tf.float32))
  image = tf.cond(tf.reduce_any(shrunk < size),
                  lambda: tf.image.resize(image, size, 'bilinear'),
                  lambda: image)
  return tf.ensure_shape(image, (*size, 3))


def to_uint8(image):
  """float pixels in [0, 255] -> uint8, rounded and clipped."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


# ---------------------------------------------------------------------------------------------
# Colour jitter (torchvision's semantics; see the module docstring).

def gray(image):
  """float (H, W, 3) -> (H, W, 1) luma, 0.299 R + 0.587 G + 0.114 B."""
  r, g, b = GRAY_WEIGHTS
  return r * image[..., 0:1] + g * image[..., 1:2] + b * image[..., 2:3]


def _blend(image, other, factor):
  """factor * image + (1 - factor) * other, clipped to [0, 255]."""
  return tf.clip_by_value(other + factor * (image - other), 0.0, 255.0)


def _brightness(image, factor):
  return tf.clip_by_value(image * factor, 0.0, 255.0)


def _contrast(image, factor):
  return _blend(image, tf.reduce_mean(gray(image)), factor)


def _saturation(image, factor):
  return _blend(image, gray(image), factor)


def _hue(image, shift):
  # AdjustHue is scale-free (HSV hue and saturation are ratios), so [0, 255] works as-is.
  return tf.clip_by_value(tf.image.adjust_hue(image, shift), 0.0, 255.0)


_JITTER_FNS = {'brightness': _brightness, 'contrast': _contrast, 'saturation': _saturation,
               'hue': _hue}


def jitter_factor_range(op: str, strength: float) -> Tuple[float, float]:
  """The range the factor of `op` is drawn from, as torchvision's ColorJitter."""
  if op == 'hue':
    return (-strength, strength)
  return (max(0.0, 1.0 - strength), 1.0 + strength)


def active_jitter_ops(strengths: Sequence[float]) -> Tuple[str, ...]:
  """The ops (JITTER_OPS names) whose strength is > 0."""
  return tuple(name for name, s in zip(JITTER_OPS, strengths) if s > 0)


def jitter_params(seed, strengths: Sequence[float]):
  """The random part of the jitter: (order int32 (k,), factors float32 (k,)) for the k
  active ops: order[i] is the index (among them) of the i-th op to apply."""
  active = [(n, s) for n, s in zip(JITTER_OPS, strengths) if s > 0]
  order_seed, factor_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  ranges = tf.constant([jitter_factor_range(n, s) for n, s in active] or np.zeros((0, 2)),
                       tf.float32)
  unit = tf.random.stateless_uniform([len(active)], factor_seed)
  factors = ranges[:, 0] + (ranges[:, 1] - ranges[:, 0]) * unit
  order = tf.cast(tf.argsort(tf.random.stateless_uniform([len(active)], order_seed)), tf.int32)
  return order, factors


def apply_jitter(image, order, factors, ops: Sequence[str]):
  """float32 (H, W, 3) in [0, 255] -> the ops applied in `order` with `factors`."""
  fns = [_JITTER_FNS[name] for name in ops]
  for position in range(len(ops)):
    branches = [lambda fn=fn, i=i: fn(image, factors[i]) for i, fn in enumerate(fns)]
    image = tf.switch_case(order[position], branches)
  return image


@functools.lru_cache(maxsize=None)
def _pixel_stage(ops: Tuple[str, ...]):
  """XLA-compiled flip + jitter + rounding of a fixed-size image.

  XLA fuses the jitter's dozens of element-wise passes into one function of the image
  (timings: docs/data_and_launch.md, `benchmarks/input_speed.py`).
  """
  def stage(image, flip, order, factors):
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    return to_uint8(apply_jitter(image, order, factors, ops))
  return tf.function(stage, jit_compile=True)


def flip_jitter_round(image, seed, strengths: Sequence[float]):
  """float32 (H, W, 3) in [0, 255] -> random horizontal flip, colour jitter; uint8."""
  flip_seed, jitter_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  flip = tf.random.stateless_uniform([], flip_seed) < 0.5
  order, factors = jitter_params(jitter_seed, strengths)
  return _pixel_stage(active_jitter_ops(strengths))(image, flip, order, factors)


# ---------------------------------------------------------------------------------------------
# Whole examples: bytes -> uint8 (H, W, 3).

def imagenet_train(encoded, seed, size: Tuple[int, int], crop_sampler: str,
                   area_range, aspect_range, jitter: Sequence[float]):
  """JPEG -> random crop (sampler, area and aspect ranges) resized to size, random flip,
  colour jitter; uint8 (H, W, 3)."""
  crop_seed, pixel_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image_hw = tf.io.extract_jpeg_shape(encoded)[:2]
  window = CROP_SAMPLERS[crop_sampler](image_hw, crop_seed, area_range, aspect_range)
  return flip_jitter_round(resize(decode_window(encoded, window), size), pixel_seed, jitter)


def imagenet_eval(encoded, size: Tuple[int, int], crop_fraction: float):
  """JPEG -> the centre crop of `eval_window`, resized to size; uint8 (H, W, 3)."""
  window = eval_window(tf.io.extract_jpeg_shape(encoded)[:2], size, crop_fraction)
  return to_uint8(resize(decode_window(encoded, window), size))


def cifar_train(encoded, seed, jitter: Sequence[float]):
  """PNG (32, 32, 3) -> zero-pad 4, random 32 x 32 crop, random flip (+ colour jitter if
  any strength is set); uint8."""
  crop_seed, pixel_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = tf.ensure_shape(tf.io.decode_png(encoded, channels=3), (32, 32, 3))
  image = tf.image.stateless_random_crop(tf.pad(image, [[4, 4], [4, 4], [0, 0]]),
                                         (32, 32, 3), crop_seed)
  return flip_jitter_round(tf.cast(image, tf.float32), pixel_seed, jitter)


def cifar_eval(encoded):
  """PNG -> uint8 (32, 32, 3)."""
  return tf.ensure_shape(tf.io.decode_png(encoded, channels=3), (32, 32, 3))
