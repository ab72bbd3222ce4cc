"""The residual function F and the i-RevNet block, as pure functions of F's variables.

A block maps a pair (x1, x2) to (S(x2), F(x2) + S(x1)), where S is psi(2) for a
stride-2 block and the identity otherwise; an injective block first merges the
pair, appends zero channels and splits it again. F is the only part with
parameters, so a block is `block_forward(spec, f, pair)` with `f` a closure
over F's variables, and `block_inverse` sits right below it.
"""
import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from irevnet_jax.model import norm as normalization
from irevnet_jax.model import ops
from irevnet_jax.model.layout import Architecture, BlockSpec

Pair = Tuple[jax.Array, jax.Array]
# f(u) -> (F(u) in the stream dtype, updated batch_stats of F)
FFn = Callable[[jax.Array], Tuple[jax.Array, dict]]

# PyTorch's default conv/linear initialisation (the released code's), uniform with
# variance 1 / (3 fan_in): smaller than LeCun's, which keeps F's gain and so the
# float error of a reconstruction through ~100 blocks small.
torch_default_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def param_dtype(dtype: str):
  """dtype of the parameters, BN statistics and coupling streams of a model computing in
  `dtype`: float64 for a float64 model, float32 otherwise."""
  return jnp.float64 if dtype == 'float64' else jnp.float32


def stream_dtype(arch):
  """dtype of the coupling streams of `arch` (an `Architecture`): bfloat16 where it computes
  in bfloat16 and asks for bfloat16 streams, its parameter dtype otherwise."""
  if arch.dtype == 'bfloat16' and arch.stream_dtype == 'bfloat16':
    return jnp.bfloat16
  return param_dtype(arch.dtype)


def centred_padding(kernel_size: int):
  """Explicit padding of a k x k convolution: Flax's 'SAME' pads stride-2 convs asymmetrically."""
  p = kernel_size // 2
  return ((p, p), (p, p))


def conv_and_norm(dtype: str, precision: str, train: bool, bn_axis_name: Optional[str],
                  kernel_init: Callable = torch_default_init):
  """Partials of the bias-free convolution and the BatchNorm that every network here uses."""
  conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype, param_dtype=param_dtype(dtype),
                           precision=precision, kernel_init=kernel_init)
  norm = functools.partial(normalization.BatchNorm, use_running_average=not train, dtype=dtype,
                           param_dtype=param_dtype(dtype), axis_name=bn_axis_name)
  return conv, norm


class ConvKernel(nn.Module):
  """The variable of a bias-free `nn.Conv` (its name, shape and initial values) for a
  convolution computed elsewhere: C_in -> kernel (k, k, C_in, features)."""
  features: int
  kernel_size: int
  param_dtype: Any
  kernel_init: Callable = torch_default_init

  @nn.compact
  def __call__(self, in_channels: int):
    shape = (self.kernel_size, self.kernel_size, in_channels, self.features)
    return self.param('kernel', self.kernel_init, shape, self.param_dtype)


class Bottleneck(nn.Module):
  """F, the pre-activation bottleneck: (N, H, W, C_in) -> (N, H/s, W/s, width).

  [BN -> ReLU ->] conv k1 (stride s, C_in -> hidden) -> BN -> ReLU -> conv k2
  -> Dropout -> BN -> ReLU -> conv k3 (hidden -> width); no conv biases. The
  network's first block omits the leading BN-ReLU. With fused_kernel='pallas' each
  stride-1 BN-ReLU-conv is one Pallas kernel (`pallas_conv`; the same variables).
  """
  width: int
  hidden: int
  stride: int
  first: bool
  kernel_sizes: Sequence[int]
  dropout_rate: float = 0.0
  dtype: str = 'float32'
  precision: str = 'highest'
  bn_axis_name: Optional[str] = None
  fused_bn_relu: bool = True      # BN-ReLU's lean backward (norm.BatchNorm's `fused`)
  fused_kernel: str = 'none'      # 'pallas': stride-1 BN-ReLU-conv pairs in one kernel

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv, norm = conv_and_norm(self.dtype, self.precision, train, self.bn_axis_name)
    layers = ((self.hidden, self.stride), (self.hidden, 1), (self.width, 1))
    for i, ((features, stride), k) in enumerate(zip(layers, self.kernel_sizes)):
      if i == 2:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      conv_i = functools.partial(conv, features, (k, k), strides=(stride, stride),
                                 padding=centred_padding(k), name=f'Conv_{i}')
      if i == 0 and self.first:
        x = conv_i()(x)
        continue
      bn_relu = norm(relu=True, fused=self.fused_bn_relu, name=f'BatchNorm_{i - self.first}')
      if self.fused_kernel == 'pallas' and stride == 1:
        kernel = ConvKernel(features, k, param_dtype(self.dtype), name=f'Conv_{i}')(x.shape[-1])
        x = bn_relu(x, conv_kernel=kernel, conv_precision=self.precision)
      else:
        x = conv_i()(bn_relu(x))
    return x


def make_bottleneck(arch: Architecture, spec: BlockSpec, bn_axis_name=None) -> Bottleneck:
  """The (unbound) F of one block."""
  return Bottleneck(
      width=spec.width, hidden=spec.width // arch.bottleneck_mult, stride=spec.stride,
      first=spec.first, kernel_sizes=arch.kernel_sizes, dropout_rate=arch.dropout_rate,
      dtype=arch.dtype, precision=arch.precision, bn_axis_name=bn_axis_name,
      fused_bn_relu=arch.fused_bn_relu, fused_kernel=arch.fused_kernel, parent=None)


def init_bottleneck(f: Bottleneck, spec: BlockSpec, rng) -> dict:
  """F's variables {'params', 'batch_stats'}, from a dummy one-image input."""
  dummy = jnp.zeros((1, *spec.spatial, spec.f_in_channels), param_dtype(f.dtype))
  return f.init({'params': rng}, dummy, train=False)


def initial_batch_stats(f: Bottleneck, spec: BlockSpec, num_stacked: int = 0) -> dict:
  """F's fresh running statistics (means 0, variances 1), without running an init.

  With `num_stacked` > 0 each leaf gets a leading axis of that size.
  """
  shapes = jax.eval_shape(lambda: init_bottleneck(f, spec, jax.random.PRNGKey(0)))
  lead = (num_stacked,) if num_stacked else ()

  def fresh(path, leaf):
    fill = jnp.ones if path[-1].key == 'var' else jnp.zeros
    return fill(lead + leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fresh, shapes['batch_stats'])


def declare_variables(module: nn.Module, name: str, f: Bottleneck, spec: BlockSpec,
                      num_stacked: int = 0):
  """Declares F's variables on `module` under `name` in 'params' and 'batch_stats'.

  With `num_stacked` > 0 they are the variables of that many alike couplings,
  stacked on a leading axis. Returns (params, the batch_stats `nn.Variable`).
  """
  def init_params(rng):
    if not num_stacked:
      return init_bottleneck(f, spec, rng)['params']
    init_one = functools.partial(init_bottleneck, f, spec)
    return jax.vmap(init_one)(jax.random.split(rng, num_stacked))['params']

  params = module.param(name, init_params)
  stats = module.variable('batch_stats', name, lambda: initial_batch_stats(f, spec, num_stacked))
  return params, stats


def apply_bottleneck(f: Bottleneck, variables, u, train: bool, key) -> Tuple[jax.Array, dict]:
  """F(u) cast to u's dtype (the coupling stream stays float32 when F runs in bfloat16).

  Returns (F(u), batch_stats): updated running statistics in train mode, the
  given ones otherwise. `key` drives dropout and is only read in train mode.
  """
  if train:
    h, updates = f.apply(variables, u, train=True, rngs={'dropout': key},
                         mutable=['batch_stats'])
    return h.astype(u.dtype), updates['batch_stats']
  return f.apply(variables, u, train=False).astype(u.dtype), variables['batch_stats']


def block_forward(spec: BlockSpec, f: FFn, pair: Pair) -> Tuple[Pair, dict]:
  """(x1, x2) -> (S(x2), F(x2) + S(x1)); also returns F's updated batch_stats.

  Shapes: each half (N, H, W, C_in/2) -> (N, H/s, W/s, width).
  """
  x1, x2 = pair
  if spec.pad:
    x1, x2 = ops.split(ops.pad_channels(ops.merge(x1, x2), spec.pad))
  h, stats = f(x2)
  return (ops.psi(x2, spec.stride), h + ops.psi(x1, spec.stride)), stats


def block_inverse(spec: BlockSpec, f: FFn, pair: Pair) -> Pair:
  """Inverse of `block_forward`: x2 = S^-1(a), x1 = S^-1(b - F(x2))."""
  a, b = pair
  x2 = ops.psi_inverse(a, spec.stride)
  h, _ = f(x2)
  x1 = ops.psi_inverse(b - h, spec.stride)
  if spec.pad:
    x1, x2 = ops.split(ops.unpad_channels(ops.merge(x1, x2), spec.pad))
  return x1, x2


def block_reverse_step(spec: BlockSpec, f_of_params: Callable, params, pair: Pair,
                       grads: Pair) -> Tuple[Pair, Pair, dict]:
  """One backward step of reversible backprop, with a single evaluation of F.

  From the block's output pair and the loss gradient at it, rebuilds the
  block's input and returns (input pair, gradient at the input pair, gradient
  at F's params). `f_of_params(params, u) -> F(u)`. psi is a permutation, so
  its transpose (which carries gradients back) is its inverse.
  """
  a, b = pair
  ga, gb = grads
  s = spec.stride
  u2 = ops.psi_inverse(a, s)
  h, f_vjp = jax.vjp(f_of_params, params, u2)
  u1 = ops.psi_inverse(b - h, s)
  g_params, g_u2_from_f = f_vjp(gb)
  g_u1 = ops.psi_inverse(gb, s)
  g_u2 = ops.psi_inverse(ga, s) + g_u2_from_f
  if spec.pad:
    u1, u2 = ops.split(ops.unpad_channels(ops.merge(u1, u2), spec.pad))
    g_u1, g_u2 = ops.split(ops.unpad_channels(ops.merge(g_u1, g_u2), spec.pad))
  return (u1, u2), (g_u1, g_u2), g_params
