"""`BaselineNet`: the `Net` API (init / forward / invert) for the non-invertible baselines."""
import functools
from typing import Optional

import jax

from irevnet_jax.baselines import presets, resnet, revnet


class BaselineNet:
  """Pure functions over Flax variables for ResNet or RevNet.

  Same API as `irevnet_jax.network.Net`: `forward` returns (logits, features),
  the last stage's output before the head. `invert` raises: these networks
  discard information (ResNet everywhere, RevNet at each stage's first unit).
  """

  invertible = False

  def __init__(self, module):
    self.module = module
    self.arch = module.arch

  def __repr__(self):
    return f'BaselineNet(\n{presets.describe(self.arch)})'

  @property
  def input_shape(self):
    return self.arch.input_shape

  @property
  def z_shape(self):
    """(H, W, C) of the features that `forward` returns."""
    return self.arch.features_shape

  def init(self, rng, x):
    """Fresh variables {'params', 'batch_stats'} (jitted); x (N, H, W, C) is only checked."""
    variables = jax.jit(functools.partial(self.module.init, train=False))({'params': rng}, x)
    return {'params': variables['params'], 'batch_stats': variables['batch_stats']}

  def forward(self, variables, x, train: bool = False, rngs=None):
    """Eval mode: x -> (logits, features) with running BN statistics.

    train=True: x -> ((logits, features), {'batch_stats': updated}) with batch
    statistics (`rngs` is accepted for API parity; these models have no dropout).
    """
    if not train:
      return self.module.apply(variables, x, train=False)
    return self.module.apply(variables, x, train=True, rngs=rngs, mutable=['batch_stats'])

  def invert(self, variables, z, train: bool = False, rngs=None):
    """Raises NotImplementedError: the baselines discard information."""
    where = ('in every unit' if self.arch.kind == 'resnet'
             else "in each stage's first unit (strided projections)")
    raise NotImplementedError(
        f'model.arch={self.arch.kind!r} is not invertible: it discards information {where}; '
        f"use model.arch='irevnet' for a network with an inverse.")


def build(model_config, bn_axis_name: Optional[str] = None) -> BaselineNet:
  """Validates a baseline model config (arch 'resnet' or 'revnet') and returns its `BaselineNet`.

  `bn_axis_name`: the pmap / shard_map axis over which train-mode batch
  statistics are averaged (synchronised BN); None for per-device statistics.
  """
  arch = presets.layout(model_config)
  module_cls = resnet.ResNet if arch.kind == 'resnet' else revnet.RevNet
  return BaselineNet(module_cls(arch, bn_axis_name))
