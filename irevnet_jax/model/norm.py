"""Batch normalisation for every network here, and its constants in one place.

`BatchNorm` computes what `flax.linen.BatchNorm` computes (same variable names
and initial values, statistics in at least float32, Var = E[x^2] - E[x]^2
clipped at 0), with two differences:

- synchronised statistics (`axis_name`): the mean and the mean of squares are
  averaged in one buffer with `collectives.mean` (one collective per layer and
  pass): in a fixed device order by default, so they have the same bits whatever
  the process layout (Flax's `lax.pmean` does not), or natively inside a
  `collectives.reductions(False)` block (see `irevnet_jax.model.collectives`);
- the running statistics have the parameters' dtype (float64 in a float64 model;
  Flax creates them in float32);
- `relu=True` applies a ReLU after it; in training that is one op with a lean
  backward (`bn_relu.batch_norm_relu`: it saves x and per-channel numbers where
  autodiff saves ~4 full-size tensors), or with `fused=False` autodiff of BN then
  `nn.relu`, the reference. The variables are the same either way;
- with a `conv_kernel` at call time (relu=True), the stride-1 convolution that follows
  joins them in one Pallas kernel (`pallas_conv`: training and evaluation alike).

PyTorch's momentum m is Flax's 1 - m.
"""
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from irevnet_jax.errors import UserError
from irevnet_jax.model import bn_relu

EPSILON = 1e-5              # PyTorch's default
BLOCK_MOMENTUM = 0.9        # every BN inside F and the baselines: PyTorch momentum 0.1
HEAD_MOMENTUM = 0.1         # the released i-RevNet head BN: PyTorch momentum 0.9


class BatchNorm(nn.Module):
  """BN over all axes but the last: (..., C) -> (..., C).

  Variables: params 'scale', 'bias' (C,); batch_stats 'mean', 'var' (C,).
  `use_running_average` may be given here or at call time.
  """
  use_running_average: Optional[bool] = None
  momentum: float = BLOCK_MOMENTUM
  epsilon: float = EPSILON
  dtype: Optional[Any] = None          # of the output; None: of the input
  param_dtype: Any = jnp.float32
  axis_name: Optional[str] = None      # pmap / shard_map axis of synchronised statistics
  scale_init: Callable = nn.initializers.ones
  relu: bool = False                   # ReLU after the normalisation
  fused: bool = True                   # relu=True in training: bn_relu's lean backward

  @nn.compact
  def __call__(self, x, use_running_average: Optional[bool] = None, conv_kernel=None,
               conv_precision=None):
    """relu=True and `conv_kernel` (k, k, C, C_out): returns conv(relu(BN(x))) (stride 1,
    centred padding) from one Pallas kernel (`pallas_conv`): (..., C) -> (..., C_out)."""
    use_running_average = nn.merge_param(
        'use_running_average', self.use_running_average, use_running_average)
    if conv_kernel is not None and not self.relu:
      raise UserError('BatchNorm(conv_kernel=...) fuses BN, ReLU and the convolution: '
                      'give it relu=True.')
    if conv_kernel is not None:   # Pallas is experimental and opt-in: loaded only when used
      from irevnet_jax.model import pallas_conv  # pylint: disable=g-import-not-at-top
    features = x.shape[-1]
    stats_dtype = jnp.promote_types(self.param_dtype, jnp.float32)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), stats_dtype)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), stats_dtype)

    scale = self.param('scale', self.scale_init, (features,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (features,), self.param_dtype)
    lean = not use_running_average and self.relu and self.fused
    if lean and conv_kernel is not None:
      y, mean, var = pallas_conv.batch_norm_relu_conv(
          x, scale, bias, conv_kernel, epsilon=self.epsilon, dtype=self.dtype,
          precision=conv_precision, axis_name=self.axis_name)
    elif lean:
      y, mean, var = bn_relu.batch_norm_relu(x, scale, bias, epsilon=self.epsilon,
                                             dtype=self.dtype, axis_name=self.axis_name)
    else:
      if use_running_average:
        mean, var = running_mean.value, running_var.value
      else:
        mean, var = bn_relu.batch_moments(x, self.axis_name)
      inv_std = lax.rsqrt(var + self.epsilon)
      if conv_kernel is not None:
        y = pallas_conv.normalise_relu_conv(x, mean, inv_std, scale, bias, conv_kernel,
                                            dtype=self.dtype, precision=conv_precision)
      else:
        y = bn_relu.normalise(x, mean, inv_std, scale, bias)
        y = y if self.dtype is None else jnp.asarray(y, self.dtype)
        y = nn.relu(y) if self.relu else y
    if not use_running_average and not self.is_initializing():
      m = self.momentum
      running_mean.value = m * running_mean.value + (1 - m) * mean.astype(stats_dtype)
      running_var.value = m * running_var.value + (1 - m) * var.astype(stats_dtype)
    return y
