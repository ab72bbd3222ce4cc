"""RevNet (Gomez et al. 2017), the paper's RevNet-56 / RevNet-104 baselines.

    x (N, H, W, C) -> stem -> split -> stages of units -> merge -> features
    logits = Dense(mean_HW(ReLU(BN(features))))

A unit maps a pair (x1, x2) to

    y1 = x1 + F(x2),    y2 = x2 + G(y1),

with F and G pre-activation bottlenecks (1x1, 3x3, 1x1 convs; `blocks.Bottleneck`
with kernels (1, 3, 1)). It is two additive couplings of the i-RevNet form
(a, b) -> (b, a + F(b)), so it inverts as x2 = y2 - G(y1), x1 = y1 - F(x2).
The first unit of each stage changes the shape (a stride or more channels):
there F carries the stride and x1, x2 each pass through a strided 1x1
projection instead of the identity, so that unit is not invertible and its
input is stored. The remaining `units - 1` alike units of a stage have their
variables stacked on a leading axis and run as one `lax.scan` in every
backprop mode:

- 'autodiff': JAX stores every unit's activations.
- 'remat': `jax.checkpoint` per unit (only unit inputs are stored).
- 'reversible': a `jax.custom_vjp` that stores only the scan's output and, in
  the backward pass, rebuilds each unit's input from its output with one
  evaluation of G and one of F, whose vjps also give the gradients. The
  entry unit is rematerialised from its stored input.
"""
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from irevnet_jax import ops
from irevnet_jax.baselines import resnet
from irevnet_jax.baselines.presets import BaselineArch, check_input
from irevnet_jax.blocks import Bottleneck

KERNEL_SIZES = (1, 3, 1)


def residual_function(arch: BaselineArch, width: int, stride: int = 1, first: bool = False,
                      bn_axis_name: Optional[str] = None, **kwargs) -> Bottleneck:
  """F or G of a unit at stage width `width`: (N, H, W, C) -> (N, H/s, W/s, 2 * width).

  Hidden width width // 2 (the RevNet authors' out_filter // 8); `first` drops
  the leading BN-ReLU (the network's first F follows the stem's BN-ReLU).
  """
  return Bottleneck(width=2 * width, hidden=width // 2, stride=stride, first=first,
                    kernel_sizes=KERNEL_SIZES, dtype=arch.dtype, precision=arch.precision,
                    bn_axis_name=bn_axis_name, **kwargs)


def _apply(module: Bottleneck, params, stats, u, train: bool):
  """(module(u) in u's dtype, batch_stats): updated statistics in train mode, else the given."""
  variables = {'params': params, 'batch_stats': stats}
  if train:
    h, updates = module.apply(variables, u, train=True, mutable=['batch_stats'])
    return h.astype(u.dtype), updates['batch_stats']
  return module.apply(variables, u, train=False).astype(u.dtype), stats


# --- One invertible unit: forward, inverse and the reversible backward step ----------------


def unit_forward(f, g, pair):
  """(x1, x2) -> (y1, y2) = (x1 + F(x2), x2 + G(y1)); f, g: u -> (value, batch_stats).

  Returns ((y1, y2), (F's batch_stats, G's batch_stats)). Each half (N, H, W, C/2).
  """
  x1, x2 = pair
  hf, stats_f = f(x2)
  y1 = x1 + hf
  hg, stats_g = g(y1)
  return (y1, x2 + hg), (stats_f, stats_g)


def unit_inverse(f, g, pair):
  """Inverse of `unit_forward`: x2 = y2 - G(y1), x1 = y1 - F(x2)."""
  y1, y2 = pair
  x2 = y2 - g(y1)[0]
  return y1 - f(x2)[0], x2


def unit_reverse_step(f_of_params, g_of_params, params_f, params_g, pair, grads):
  """One unit of reversible backprop, with one evaluation each of G and F.

  From the unit's output pair (y1, y2) and the loss gradient at it, returns
  (input pair, gradient at the input pair, (gradient at F's params, at G's)).
  `f_of_params(params, u) -> F(u)`, likewise for G.
  """
  y1, y2 = pair
  g_y1, g_y2 = grads
  hg, g_vjp = jax.vjp(g_of_params, params_g, y1)
  x2 = y2 - hg
  grad_pg, g_y1_via_g = g_vjp(g_y2)
  g_y1 = g_y1 + g_y1_via_g            # y1 feeds G and the output
  hf, f_vjp = jax.vjp(f_of_params, params_f, x2)
  x1 = y1 - hf
  grad_pf, g_x2_via_f = f_vjp(g_y1)
  return (x1, x2), (g_y1, g_y2 + g_x2_via_f), (grad_pf, grad_pg)


# --- A stack of alike units, variables stacked on axis 0 --------------------------------------


def _forward_scan(module, train, checkpoint, params, stats, pair):
  def step(pair, xs):
    pf, pg, sf, sg = xs
    f = functools.partial(_apply, module, pf, sf, train=train)
    g = functools.partial(_apply, module, pg, sg, train=train)
    return unit_forward(f, g, pair)
  if checkpoint:
    step = jax.checkpoint(step)
  pair, (stats_f, stats_g) = lax.scan(
      step, pair, (params['f'], params['g'], stats['f'], stats['g']))
  return pair, {'f': stats_f, 'g': stats_g}


def _reversible_scan(module, train):
  """A custom_vjp function (params, stats, pair) -> (pair, new_stats) storing only its output."""

  @jax.custom_vjp
  def run(params, stats, pair):
    return _forward_scan(module, train, False, params, stats, pair)

  def run_fwd(params, stats, pair):
    out, new_stats = run(params, stats, pair)
    return (out, new_stats), (params, stats, out)

  def run_bwd(residuals, cotangents):
    params, stats, out = residuals
    g_out, _ = cotangents  # running statistics carry no gradient

    def step(carry, xs):
      pair, grads = carry
      pf, pg, sf, sg = xs
      f_of_params = lambda p, u: _apply(module, p, sf, u, train)[0]
      g_of_params = lambda p, u: _apply(module, p, sg, u, train)[0]
      pair, grads, (grad_pf, grad_pg) = unit_reverse_step(
          f_of_params, g_of_params, pf, pg, pair, grads)
      return (pair, grads), (grad_pf, grad_pg)

    xs = (params['f'], params['g'], stats['f'], stats['g'])
    (_, g_in), (grad_f, grad_g) = lax.scan(step, (out, g_out), xs, reverse=True)
    return {'f': grad_f, 'g': grad_g}, None, g_in

  run.defvjp(run_fwd, run_bwd)
  return run


def run_units(mode, module, params, stats, pair, train):
  """Applies the alike units of a stage.

  Args:
    mode: 'autodiff', 'remat' or 'reversible'.
    module: the (unbound) `Bottleneck` shared by every F and G of the units.
    params, stats: {'f': ..., 'g': ...}, each stacked on a leading unit axis.
    pair: each half (N, H, W, 2 * width).
    train: batch statistics if True, running statistics otherwise.
  Returns:
    (output pair, {'f', 'g'} stacked batch_stats after the units' updates).
  """
  if mode == 'reversible':
    return _reversible_scan(module, train)(params, stats, pair)
  return _forward_scan(module, train, mode == 'remat', params, stats, pair)


def invert_units(module, params, stats, pair, train=False):
  """Inverse of `run_units` (any mode): walks the stacked units in reverse."""
  def step(pair, xs):
    pf, pg, sf, sg = xs
    f = functools.partial(_apply, module, pf, sf, train=train)
    g = functools.partial(_apply, module, pg, sg, train=train)
    return unit_inverse(f, g, pair), None
  pair, _ = lax.scan(step, pair, (params['f'], params['g'], stats['f'], stats['g']),
                     reverse=True)
  return pair


# --- Modules -----------------------------------------------------------------------------------


class EntryUnit(nn.Module):
  """A stage's first unit: each half (N, H, W, C_in/2) -> (N, H/s, W/s, 2 * width).

  y1 = P1(x1) + F(x2), y2 = P2(x2) + G(y1), where P1, P2 are strided 1x1
  projections (the identity when neither the stride nor the channels change).
  """
  arch: BaselineArch
  width: int
  stride: int
  first: bool
  train: bool = False
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, pair):
    arch = self.arch
    conv, _ = resnet.conv_and_norm(arch, self.train, self.bn_axis_name)
    x1, x2 = pair
    half = 2 * self.width

    def project(x, name):
      if self.stride == 1 and x.shape[-1] == half:
        return x
      s = (self.stride, self.stride)
      return conv(half, (1, 1), strides=s, name=name)(x).astype(x.dtype)

    f = residual_function(arch, self.width, self.stride, self.first, self.bn_axis_name, name='f')
    g = residual_function(arch, self.width, 1, False, self.bn_axis_name, name='g')
    y1 = project(x1, 'proj1') + f(x2, self.train).astype(x2.dtype)
    y2 = project(x2, 'proj2') + g(y1, self.train).astype(y1.dtype)
    return y1, y2


class RevNetStage(nn.Module):
  """Stage `index`: an `EntryUnit`, then `units - 1` alike invertible units ('rest_f', 'rest_g')."""
  arch: BaselineArch
  index: int
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, pair, train: bool = False):
    arch, i = self.arch, self.index
    width, num_rest = arch.widths[i], arch.units[i] - 1
    entry = EntryUnit if arch.backprop == 'autodiff' else nn.remat(EntryUnit)
    pair = entry(arch, width, arch.strides[i], i == 0, train, self.bn_axis_name,
                 name='entry')(pair)
    if not num_rest:
      return pair
    module = rest_module(arch, i, self.bn_axis_name)
    dummy = jnp.zeros((1, *pair[0].shape[1:]), pair[0].dtype)

    def init(rng):
      return jax.vmap(lambda k: module.init({'params': k}, dummy, train=False))(
          jax.random.split(rng, num_rest))

    params = {k: self.param(f'rest_{k}', lambda rng: init(rng)['params']) for k in 'fg'}
    stats = {k: self.variable('batch_stats', f'rest_{k}',
                              lambda: init(jax.random.PRNGKey(0))['batch_stats']) for k in 'fg'}
    pair, new_stats = run_units(arch.backprop, module, params,
                                {k: v.value for k, v in stats.items()}, pair, train)
    if train and not self.is_initializing():
      for k in 'fg':
        stats[k].value = new_stats[k]
    return pair


def rest_module(arch: BaselineArch, index: int, bn_axis_name=None) -> Bottleneck:
  """The unbound F (= G) of the invertible units of stage `index`."""
  return residual_function(arch, arch.widths[index], bn_axis_name=bn_axis_name, parent=None)


class RevNet(nn.Module):
  """`__call__(x, train) -> (logits (N, num_classes) float32, features (N, H', W', 4 * width))`."""
  arch: BaselineArch
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    arch = self.arch
    check_input(arch, x)
    _, norm = resnet.conv_and_norm(arch, train, self.bn_axis_name)
    stream = resnet.param_dtype(arch)
    x = jnp.asarray(x, stream)
    h = resnet.Stem(arch, train, self.bn_axis_name, name='stem')(x).astype(stream)
    pair = ops.split(h)
    for i in range(len(arch.units)):
      pair = RevNetStage(arch, i, self.bn_axis_name, name=f'stage{i}')(pair, train)
    features = ops.merge(*pair)
    h = nn.relu(norm(name='head_norm')(features))
    logits = nn.Dense(arch.num_classes, dtype=arch.dtype, param_dtype=stream,
                      name='classifier')(jnp.mean(h, axis=(1, 2)))
    return logits.astype(stream), features
