"""Reconstruction error of invert(forward(x)), accumulated batch by batch in float64.

Over all pixels of all examples seen:
  rel_l2_error   = ||x_hat - x||_2 / ||x||_2
  max_abs_error  = max |x_hat - x|
  psnr_db        = 10 log10(range^2 / mean((x_hat - x)^2)), range = max(x) - min(x)
and the worst single-image relative error, so one bad image cannot hide in the mean.
"""
import math

import jax
import numpy as np

from irevnet_jax.errors import UserError


class ReconstructionStats:
  """`update(x, x_hat)` per batch (N, H, W, C); `result()` gives the dict above."""

  def __init__(self):
    self.sum_sq_err = 0.0
    self.sum_sq = 0.0
    self.max_abs = 0.0
    self.max_image_rel = 0.0
    self.lo = math.inf
    self.hi = -math.inf
    self.values = 0
    self.examples = 0

  def update(self, x, x_hat):
    x = np.asarray(x, np.float64)
    err = np.asarray(x_hat, np.float64) - x
    if err.shape != x.shape:
      raise UserError(f'x_hat has shape {err.shape}, expected the input shape {x.shape}.')
    if not len(x):
      return
    self.sum_sq_err += float(np.sum(err * err))
    self.sum_sq += float(np.sum(x * x))
    self.max_abs = max(self.max_abs, float(np.max(np.abs(err))))
    per_image = (np.linalg.norm(err.reshape(len(x), -1), axis=1) /
                 np.maximum(np.linalg.norm(x.reshape(len(x), -1), axis=1), 1e-30))
    self.max_image_rel = max(self.max_image_rel, float(np.max(per_image)))
    self.lo = min(self.lo, float(np.min(x)))
    self.hi = max(self.hi, float(np.max(x)))
    self.values += x.size
    self.examples += len(x)

  def result(self) -> dict:
    if not self.examples:
      raise UserError('ReconstructionStats saw no examples; call update(x, x_hat) first.')
    mse = self.sum_sq_err / self.values
    data_range = self.hi - self.lo
    return {
        'examples': self.examples,
        'rel_l2_error': math.sqrt(self.sum_sq_err / max(self.sum_sq, 1e-300)),
        'max_abs_error': self.max_abs,
        'max_image_rel_error': self.max_image_rel,
        'mse': mse,
        'psnr_db': psnr(mse, data_range),
        'data_range': data_range,
    }


def psnr(mse: float, data_range: float) -> float:
  """Peak signal-to-noise ratio in dB; inf for an exact reconstruction."""
  if mse <= 0:
    return math.inf
  return 10.0 * math.log10(data_range ** 2 / mse)


def collapsed_batch_norms(variables, threshold: float = 1e-6):
  """Paths of BatchNorm layers whose smallest running variance is below `threshold`.

  Such a layer divides by ~sqrt(epsilon) (1/316 for eps 1e-5): it amplifies any
  error in its input by that much. A block whose F sees a constant input during
  training (e.g. an all-zero half after injective padding) ends up with
  collapsed statistics, and three of them in one F turn float32 rounding
  (~1e-7) into O(1) reconstruction errors. Returns [(path, min variance)].
  """
  found = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables.get('batch_stats', {}))[0]:
    keys = [getattr(k, 'key', str(k)) for k in path]
    if keys and keys[-1] == 'var':
      low = float(np.min(np.asarray(leaf)))
      if low < threshold:
        found.append(('/'.join(map(str, keys[:-1])), low))
  return found
