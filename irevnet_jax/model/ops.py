"""Parameter-free invertible primitives, each next to its inverse (layout NHWC).

All of them are pure reshapes, transposes, slices or concatenations, so every
inverse here is bit-exact in any dtype.
"""
import jax.numpy as jnp


def psi(x, block_size):
  """Space-to-depth: (N, H, W, C) -> (N, H/b, W/b, b*b*C).

  Output channel `(dy * b + dx) * C + c` holds input channel `c` at offset
  `(dy, dx)` inside each b x b patch: all channels of the top-left pixel first,
  then the rest of the top row, then the next rows (TensorFlow's
  `space_to_depth` order, the order of the authors' released weights).
  """
  if block_size == 1:
    return x
  n, h, w, c = x.shape
  b = block_size
  x = x.reshape(n, h // b, b, w // b, b, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // b, w // b, b * b * c)


def psi_inverse(y, block_size):
  """Depth-to-space, the inverse of `psi`: (N, H, W, b*b*C) -> (N, H*b, W*b, C)."""
  if block_size == 1:
    return y
  n, h, w, bbc = y.shape
  b = block_size
  c = bbc // (b * b)
  y = y.reshape(n, h, w, b, b, c)
  y = y.transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(n, h * b, w * b, c)


def pad_channels(x, pad):
  """Injective padding: append `pad` zero channels at the end, (..., C) -> (..., C + pad)."""
  if pad == 0:
    return x
  zeros = jnp.zeros(x.shape[:-1] + (pad,), x.dtype)
  return jnp.concatenate([x, zeros], axis=-1)


def unpad_channels(x, pad):
  """Inverse of `pad_channels`: drop the last `pad` channels."""
  if pad == 0:
    return x
  return x[..., :x.shape[-1] - pad]


def split(x):
  """(..., C) -> ((..., C // 2), (..., C - C // 2)): the first floor(C/2) channels, then the rest."""
  half = x.shape[-1] // 2
  return x[..., :half], x[..., half:]


def merge(x1, x2):
  """Inverse of `split`: concatenate the pair on the channel axis."""
  return jnp.concatenate([x1, x2], axis=-1)
