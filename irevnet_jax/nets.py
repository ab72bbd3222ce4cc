"""`build` and `Net`: pure init / forward / invert for every network of this package.

    net = irevnet_jax.build(model_config)      # model.arch: 'irevnet', 'revnet' or 'resnet'
    variables = net.init(rng, x)               # {'params', 'batch_stats'}
    logits, z = net.forward(variables, x)      # z: i-RevNet's representation, a baseline's features
    x_again = net.invert(variables, z)         # i-RevNet only (net.invertible)

This module sits above both networks (`model.network.IRevNet`, `baselines`), which
import nothing from it. What differs between the models is in their frozen layout,
`net.arch` (`model.layout.Architecture` or `baselines.presets.BaselineArch`):
`invertible`, `input_shape`, `z_shape`, `dropout_rate`, `describe()`.
"""
import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from irevnet_jax import baselines
from irevnet_jax.errors import UserError
from irevnet_jax.model import precision, presets
from irevnet_jax.model.network import IRevNet


class Net:
  """Pure functions over Flax variables for one network.

  `variables` is `{'params': ..., 'batch_stats': ...}`. Every method is pure and
  works under `jax.jit`, `jax.vmap`, `jax.grad` and `jax.pmap`.
  """

  def __init__(self, module):
    self.module = module
    self.arch = module.arch
    self._init = jax.jit(functools.partial(module.init, train=False))

  def __repr__(self):
    lines = self.arch.describe().splitlines()
    return 'Net: ' + '\n     '.join(lines)

  @property
  def invertible(self) -> bool:
    return self.arch.invertible

  @property
  def input_shape(self):
    return self.arch.input_shape

  def exact(self) -> 'Net':
    """The same network (variables are shared) in the numerics exact inversion needs:
    `model.precision`'s rule, float32 (float64 stays float64) at precision 'highest'."""
    arch = dataclasses.replace(self.arch, dtype=precision.exact_dtype(self.arch.dtype),
                               precision=precision.EXACT_PRECISION)
    return Net(self.module.clone(arch=arch))

  @property
  def z_shape(self):
    """(H, W, C) of what `forward` returns beside the logits."""
    return self.arch.z_shape

  def init(self, rng, x):
    """Fresh variables {'params', 'batch_stats'}; x (N, H, W, C) fixes nothing but is checked."""
    variables = self._init({'params': rng}, x)
    return {'params': variables['params'], 'batch_stats': variables['batch_stats']}

  def forward(self, variables, x, train: bool = False, rngs=None):
    """Eval mode: x -> (logits, z) with running BN statistics. One example (H, W, C)
    without the batch axis gives (logits (K,), z (H', W', C')): `jax.vmap` works over it.

    train=True: x -> ((logits, z), {'batch_stats': updated}) with batch statistics
    and dropout (`rngs={'dropout': key}` when model.dropout_rate > 0).
    """
    if not train:
      return _one_or_batch(lambda xs: self.module.apply(variables, xs, train=False),
                           x, self.input_shape, train)
    if self.arch.dropout_rate > 0 and not (rngs and 'dropout' in rngs):
      raise UserError("This model uses dropout: pass rngs={'dropout': key} to forward(train=True).")
    return self.module.apply(variables, x, train=True, rngs=rngs, mutable=['batch_stats'])

  def invert(self, variables, z, train: bool = False, rngs=None):
    """z -> x (batched, or one example as in `forward`; `jax.vmap` works over single
    examples). Eval mode uses running BN statistics; train=True recomputes F with
    the batch statistics of the rebuilt activations (and replays dropout from `rngs`),
    which inverts a train-mode forward on the same batch.

    Raises NotImplementedError for the baselines, which discard information.
    """
    if not self.invertible:
      raise NotImplementedError(self.arch.why_not_invertible)
    return _one_or_batch(lambda zs: self.module.apply(
        variables, zs, train=train, rngs=rngs, method=type(self.module).invert),
        z, self.z_shape, train)


def _one_or_batch(fn, a, example_shape, train):
  """fn over a batch; one example (rank of `example_shape`) goes in as a batch of one and
  comes out without the batch axis (eval mode only: batch statistics need a batch)."""
  if jnp.ndim(a) != len(example_shape):
    return fn(a)
  if train:
    raise UserError(f'train=True needs a batch (N, {", ".join(map(str, example_shape))}), '
                    f'got one example of shape {jnp.shape(a)}: batch statistics need a batch.')
  return jax.tree_util.tree_map(lambda out: out[0], fn(jnp.asarray(a)[None]))


def build(model_config, bn_axis_name: Optional[str] = None) -> Net:
  """Validates a model config and returns its `Net`.

  `model_config.arch` picks the network: 'irevnet' (the default), or a baseline
  ('resnet', 'revnet'; see `irevnet_jax.baselines`). `bn_axis_name`: the pmap /
  shard_map axis over which train-mode batch statistics are averaged
  (synchronised BN); None for per-device statistics.
  """
  if model_config.get('arch', 'irevnet') != 'irevnet':   # a non-invertible baseline
    return Net(baselines.module(model_config, bn_axis_name))
  return Net(IRevNet(presets.layout(model_config), bn_axis_name))


def count_params(net: Net) -> int:
  """Number of parameters, counted from shapes only (no allocation)."""
  x = jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32)
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
  return sum(int(a.size) for a in jax.tree_util.tree_leaves(shapes['params']))
