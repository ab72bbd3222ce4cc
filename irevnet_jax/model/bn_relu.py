"""Training-mode batch normalisation followed by ReLU as one op with a lean backward.

Autodiff of `relu(BN(x))` keeps, per element, float32 x, float32 (x - mean), the
ReLU mask and the output (16.5 bytes per element for a bfloat16 layer).
`batch_norm_relu` is a `jax.custom_vjp` that keeps only x (in its own dtype) and
per-channel numbers (mean, 1/std, scale, bias), and recomputes x_hat and the
mask in the backward. Its gradients are autodiff's to rounding, the gradient
through the batch statistics included; with `axis_name` the statistics are those
of the global batch and the backward's two per-channel means are averaged over
the devices with `collectives.mean` (ordered or native, as in the forward).

Statistics are computed in at least float32 (float64 for a float64 input), the
output in `dtype`.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from irevnet_jax.model import collectives


def statistics_dtype(dtype):
  """float32, or float64 for a float64 input."""
  return jnp.promote_types(dtype, jnp.float32)


def batch_moments(x, axis_name=None, ordered=None):
  """(mean, variance) over all axes but the last of x (in `statistics_dtype`), over the
  devices of `axis_name` when given: (..., C) -> (C,), (C,). Var = E[x^2] - E[x]^2 >= 0."""
  x = x.astype(statistics_dtype(x.dtype))
  axes = tuple(range(x.ndim - 1))
  moments = jnp.stack([x.mean(axes), lax.square(x).mean(axes)])
  if axis_name is not None:
    moments = collectives.mean(moments, axis_name, ordered)
  mean, mean_sq = moments[0], moments[1]
  return mean, jnp.maximum(0.0, mean_sq - lax.square(mean))


def normalise(x, mean, inv_std, scale, bias):
  """BN's affine map with given statistics, in the statistics' dtype: (..., C) -> (..., C)."""
  return (x - mean) * (inv_std * scale) + bias


def activate(x, mean, inv_std, scale, bias, dtype):
  """relu(normalise(x)) in `dtype`: (..., C) -> (..., C); what every fused op forms."""
  return jnp.maximum(normalise(x, mean, inv_std, scale, bias), 0).astype(dtype)


def batch_statistics(x, epsilon, axis_name=None, ordered=None):
  """(mean, var, 1/sqrt(var + epsilon)) of x's batch (`batch_moments`): each (C,)."""
  mean, var = batch_moments(x, axis_name, ordered)
  return mean, var, lax.rsqrt(var + epsilon)


def _forward(x, scale, bias, epsilon, dtype, axis_name, ordered):
  mean, var, inv_std = batch_statistics(x, epsilon, axis_name, ordered)
  y = activate(x, mean, inv_std, scale, bias, dtype)
  return (y, mean, var), (x, scale, bias, mean, inv_std)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _batch_norm_relu(x, scale, bias, epsilon, dtype, axis_name, ordered):
  return _forward(x, scale, bias, epsilon, dtype, axis_name, ordered)[0]


def input_gradients(residuals, g_y, axis_name=None, ordered=None):
  """(g_x, g_scale, g_bias) of y = relu(BN(x)) with batch statistics, from y's gradient g_y.

  residuals: (x, scale, bias, mean, inv_std) of the forward (x (..., C), the rest (C,)); the
  gradient through the batch statistics is included (over the devices of `axis_name`).
  """
  x, scale, bias, mean, inv_std = residuals
  stat = mean.dtype
  pre = normalise(x, mean, inv_std, scale, bias)     # the forward's expression: its mask
  g = jnp.where(pre > 0, g_y.astype(stat), 0)
  x_hat = (x - mean) * inv_std
  axes = tuple(range(x.ndim - 1))
  g_bias = g.sum(axes)
  g_scale = (g * x_hat).sum(axes)
  count = x.size // x.shape[-1]
  means = jnp.stack([g_bias, g_scale]) / count
  if axis_name is not None:   # d mean / d x and d var / d x reach every device's elements
    means = collectives.mean(means, axis_name, ordered)
  g_x = (inv_std * scale) * (g - means[0] - x_hat * means[1])
  return g_x.astype(x.dtype), g_scale.astype(scale.dtype), g_bias.astype(bias.dtype)


def _backward(epsilon, dtype, axis_name, ordered, residuals, cotangents):
  # The statistics outputs only feed the running averages: their cotangents are dropped.
  return input_gradients(residuals, cotangents[0], axis_name, ordered)


_batch_norm_relu.defvjp(_forward, _backward)


def batch_norm_relu(x, scale, bias, *, epsilon: float, dtype=None, axis_name=None,
                    ordered=None):
  """relu(BN(x)) with batch statistics, and those statistics.

  x: (..., C); scale, bias: (C,). Returns (y, mean, var): y (..., C) in `dtype`
  (None: x's), mean and var (C,) in `statistics_dtype(x.dtype)` for the running
  averages (not differentiated). `axis_name`: synchronised statistics over those
  devices; `ordered`: as `collectives.mean` (None: the enclosing
  `collectives.reductions` block's choice, read now).
  """
  dtype = jnp.dtype(x.dtype if dtype is None else dtype)
  ordered = collectives.is_ordered(ordered)
  return _batch_norm_relu(x, scale, bias, float(epsilon), dtype, axis_name, ordered)
