"""`Net`: pure init / forward / invert functions over one Flax module, for every model here.

    net = irevnet_jax.build(model_config)      # model.arch: 'irevnet', 'revnet' or 'resnet'
    variables = net.init(rng, x)               # {'params', 'batch_stats'}
    logits, z = net.forward(variables, x)      # z: i-RevNet's representation, a baseline's features
    x_again = net.invert(variables, z)         # i-RevNet only (net.invertible)

What differs between the models is in their frozen layout, `net.arch`
(`presets.Architecture` or `baselines.presets.BaselineArch`): `invertible`,
`input_shape`, `z_shape`, `dropout_rate`, `describe()`.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from irevnet_jax import presets
from irevnet_jax.network import IRevNet


class Net:
  """Pure functions over Flax variables for one network.

  `variables` is `{'params': ..., 'batch_stats': ...}`. Every method is pure and
  works under `jax.jit`, `jax.vmap`, `jax.grad` and `jax.pmap`.
  """

  def __init__(self, module):
    self.module = module
    self.arch = module.arch

  def __repr__(self):
    return f'Net(\n{self.arch.describe()})'

  @property
  def invertible(self) -> bool:
    return self.arch.invertible

  @property
  def input_shape(self):
    return self.arch.input_shape

  @property
  def z_shape(self):
    """(H, W, C) of what `forward` returns beside the logits."""
    return self.arch.z_shape

  def init(self, rng, x):
    """Fresh variables {'params', 'batch_stats'}; x (N, H, W, C) fixes nothing but is checked."""
    variables = jax.jit(functools.partial(self.module.init, train=False))({'params': rng}, x)
    return {'params': variables['params'], 'batch_stats': variables['batch_stats']}

  def forward(self, variables, x, train: bool = False, rngs=None):
    """Eval mode: x -> (logits, z) with running BN statistics.

    train=True: x -> ((logits, z), {'batch_stats': updated}) with batch statistics
    and dropout (`rngs={'dropout': key}` when model.dropout_rate > 0).
    """
    if not train:
      return self.module.apply(variables, x, train=False)
    if self.arch.dropout_rate > 0 and not (rngs and 'dropout' in rngs):
      raise ValueError("This model uses dropout: pass rngs={'dropout': key} to forward(train=True).")
    return self.module.apply(variables, x, train=True, rngs=rngs, mutable=['batch_stats'])

  def invert(self, variables, z, train: bool = False, rngs=None):
    """z -> x. Eval mode uses running BN statistics; train=True recomputes F with
    the batch statistics of the rebuilt activations (and replays dropout from `rngs`),
    which inverts a train-mode forward on the same batch.

    Raises NotImplementedError for the baselines, which discard information.
    """
    if not self.invertible:
      raise NotImplementedError(self.arch.why_not_invertible)
    return self.module.apply(variables, z, train=train, rngs=rngs, method=type(self.module).invert)


def build(model_config, bn_axis_name: Optional[str] = None) -> Net:
  """Validates a model config and returns its `Net`.

  `model_config.arch` picks the network: 'irevnet' (the default), or a baseline
  ('resnet', 'revnet'; see `irevnet_jax.baselines`). `bn_axis_name`: the pmap /
  shard_map axis over which train-mode batch statistics are averaged
  (synchronised BN); None for per-device statistics.
  """
  if model_config.get('arch', 'irevnet') != 'irevnet':
    from irevnet_jax import baselines  # the non-invertible comparison networks
    return Net(baselines.module(model_config, bn_axis_name))
  return Net(IRevNet(presets.layout(model_config), bn_axis_name))


def count_params(net: Net) -> int:
  """Number of parameters, counted from shapes only (no allocation)."""
  x = jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32)
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
  return sum(int(a.size) for a in jax.tree_util.tree_leaves(shapes['params']))
