"""RevNet (Gomez et al. 2017), the paper's RevNet-56 / RevNet-104 baselines.

    x (N, H, W, C) -> stem -> split -> stages of units -> merge -> features
    logits = Dense(mean_HW(ReLU(BN(features))))

A unit maps a pair (x1, x2) to

    y1 = x1 + F(x2),    y2 = x2 + G(y1),

with F and G pre-activation bottlenecks (1x1, 3x3, 1x1 convs; `blocks.Bottleneck`
with kernels (1, 3, 1)). That is two stride-1 couplings of the i-RevNet form,
(a, b) -> (b, a + H(b)) with H = F and then H = G, so a stage's alike units run
on i-RevNet's engine (`irevnet_jax.model.reversible.run_steps`, two couplings a step),
in every backprop mode, with its scan unrolling policy and its reversible
backward pass. Their variables are stacked per stage under 'rest_f' and
'rest_g'.

The first unit of each stage changes the shape (a stride or more channels):
there F carries the stride and x1, x2 each pass through a strided 1x1
projection instead of the identity, so that unit is not invertible. In the
'reversible' and 'remat' modes it is rematerialised from its stored input.
"""
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from irevnet_jax.model import blocks, ops, reversible
from irevnet_jax.baselines import resnet
from irevnet_jax.baselines.presets import BaselineArch
from irevnet_jax.model.blocks import Bottleneck
from irevnet_jax.model.layout import BlockSpec

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


def rest_couplings(arch: BaselineArch, index: int, spatial: Tuple[int, int],
                   bn_axis_name: Optional[str] = None):
  """(coupling specs, unbound F = G) of stage `index`'s invertible units at `spatial` (H, W).

  A unit is two stride-1 couplings on halves of 2 * width channels: F's, then G's.
  """
  width = arch.widths[index]
  spec = BlockSpec(in_channels=4 * width, width=2 * width, stride=1, pad=0, first=False,
                   spatial=tuple(spatial))
  return (spec, spec), residual_function(arch, width, bn_axis_name=bn_axis_name, parent=None)


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
    num_rest = arch.units[i] - 1
    entry = EntryUnit if arch.backprop == 'autodiff' else nn.remat(EntryUnit)
    pair = entry(arch, arch.widths[i], arch.strides[i], i == 0, train, self.bn_axis_name,
                 name='entry')(pair)
    if not num_rest:
      return pair
    specs, f = rest_couplings(arch, i, pair[0].shape[1:3], self.bn_axis_name)
    declared = [blocks.declare_variables(self, f'rest_{k}', f, specs[0], num_rest) for k in 'fg']
    stacked = [{'params': params, 'batch_stats': stats.value} for params, stats in declared]
    keys = jax.random.split(jax.random.PRNGKey(0), num_rest)   # unused: no dropout in RevNet
    pair, new_stats = reversible.run_steps(arch.backprop, specs, f, stacked, pair, keys, train,
                                           arch.block_scan)
    if train and not self.is_initializing():
      for (_, stats), value in zip(declared, new_stats):
        stats.value = value
    return pair


class RevNet(nn.Module):
  """`__call__(x, train) -> (logits (N, num_classes) float32, features (N, H', W', 4 * width))`."""
  arch: BaselineArch
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    arch = self.arch
    stream = blocks.param_dtype(arch.dtype)
    h = resnet.Stem(arch, train, self.bn_axis_name, name='stem')(x)
    pair = ops.split(h.astype(stream))
    for i in range(len(arch.units)):
      pair = RevNetStage(arch, i, self.bn_axis_name, name=f'stage{i}')(pair, train)
    features = ops.merge(*pair)
    _, norm = resnet.conv_and_norm(arch, train, self.bn_axis_name)
    h = norm(relu=True, name='head_norm')(features)
    logits = nn.Dense(arch.num_classes, dtype=arch.dtype, param_dtype=stream,
                      name='classifier')(jnp.mean(h, axis=(1, 2)))
    return logits.astype(stream), features
