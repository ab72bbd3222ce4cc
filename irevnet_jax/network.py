"""The i-RevNet Flax module, and `Net`: pure init / forward / invert for every model here.

    x (N, H, W, C) -> psi(init_ds) -> split -> stages of blocks -> merge -> z
    logits = Dense(mean_HW(ReLU(BN(z))))

Only the head discards information; `invert` maps z back to x. The stages run on
the reversible engine (`irevnet_jax.reversible`).

    net = irevnet_jax.build(model_config)      # model.arch: 'irevnet', 'revnet' or 'resnet'
    variables = net.init(rng, x)               # {'params', 'batch_stats'}
    logits, z = net.forward(variables, x)      # z: i-RevNet's representation, a baseline's features
    x_again = net.invert(variables, z)         # i-RevNet only (net.invertible)

What differs between the models is in their frozen layout, `net.arch`
(`presets.Architecture` or `baselines.presets.BaselineArch`): `invertible`,
`input_shape`, `z_shape`, `dropout_rate`, `describe()`.
"""
import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from irevnet_jax import blocks, norm, ops, presets, reversible, validation
from irevnet_jax.presets import Architecture, StageSpec


def _stack(tree):
  return jax.tree_util.tree_map(lambda a: a[None], tree)


def _unstack(tree):
  return jax.tree_util.tree_map(lambda a: a[0], tree)


class Stage(nn.Module):
  """A stage: its leading block ('first'), then `num_rest` alike blocks ('rest').

  The variables of the alike blocks are stacked on a leading axis, so that the
  stage runs them with one `lax.scan` in every backprop mode.
  """
  arch: Architecture
  spec: StageSpec
  bn_axis_name: Optional[str] = None

  def setup(self):
    spec = self.spec
    self.first_f = blocks.make_bottleneck(self.arch, spec.first, self.bn_axis_name)
    self.first_params, self.first_stats = blocks.declare_variables(
        self, 'first', self.first_f, spec.first)
    if spec.num_rest:
      self.rest_f = blocks.make_bottleneck(self.arch, spec.rest, self.bn_axis_name)
      self.rest_params, self.rest_stats = blocks.declare_variables(
          self, 'rest', self.rest_f, spec.rest, spec.num_rest)

  def _keys(self, train):
    """One dropout key per block; drawn from the 'dropout' stream only when dropout is active."""
    n = 1 + self.spec.num_rest
    if train and self.arch.dropout_rate > 0:
      return jax.random.split(self.make_rng('dropout'), n)
    return jax.random.split(jax.random.PRNGKey(0), n)

  def _first(self):
    return _stack({'params': self.first_params, 'batch_stats': self.first_stats.value})

  def _rest(self):
    return {'params': self.rest_params, 'batch_stats': self.rest_stats.value}

  def __call__(self, pair, train: bool = False):
    """Each half (N, H, W, C_in/2) -> (N, H/s, W/s, width)."""
    keys = self._keys(train)
    mode, block_scan = self.arch.backprop, self.arch.block_scan
    pair, first_stats = reversible.run_blocks(
        mode, self.spec.first, self.first_f, self._first(), pair, keys[:1], train, block_scan)
    update = train and not self.is_initializing()
    if update:
      self.first_stats.value = _unstack(first_stats)
    if self.spec.num_rest:
      pair, rest_stats = reversible.run_blocks(
          mode, self.spec.rest, self.rest_f, self._rest(), pair, keys[1:], train, block_scan)
      if update:
        self.rest_stats.value = rest_stats
    return pair

  def inverse(self, pair, train: bool = False):
    """Inverse of `__call__`; `train=True` re-evaluates F with batch statistics."""
    keys = self._keys(train)
    block_scan = self.arch.block_scan
    if self.spec.num_rest:
      pair = reversible.invert_blocks(
          self.spec.rest, self.rest_f, self._rest(), pair, keys[1:], train, block_scan)
    return reversible.invert_blocks(
        self.spec.first, self.first_f, self._first(), pair, keys[:1], train, block_scan)


class IRevNet(nn.Module):
  """i-RevNet: `__call__(x) -> (logits, z)` and `invert(z) -> x`."""
  arch: Architecture
  bn_axis_name: Optional[str] = None

  def setup(self):
    self.stages = [Stage(self.arch, spec, self.bn_axis_name) for spec in self.arch.stages]
    stream = blocks.param_dtype(self.arch.dtype)
    self.head_norm = norm.BatchNorm(
        momentum=norm.HEAD_MOMENTUM, dtype=self.arch.dtype, param_dtype=stream,
        axis_name=self.bn_axis_name)
    self.classifier = nn.Dense(self.arch.num_classes, dtype=self.arch.dtype,
                               param_dtype=stream, kernel_init=blocks.torch_default_init)

  def __call__(self, x, train: bool = False):
    """x (N, H, W, C) -> (logits (N, num_classes), z (N, H', W', C')).

    logits are float32 (float64 in a float64 model) whatever F computes in.
    """
    validation.check_array_shape(x, self.arch.input_shape, 'x', self.arch.input_shape)
    stream = blocks.param_dtype(self.arch.dtype)
    pair = ops.split(ops.psi(jnp.asarray(x, stream), self.arch.init_ds))
    for stage in self.stages:
      pair = stage(pair, train)
    z = ops.merge(*pair)
    h = nn.relu(self.head_norm(z, use_running_average=not train))
    logits = self.classifier(jnp.mean(h, axis=(1, 2)))
    return logits.astype(stream), z

  def invert(self, z, train: bool = False):
    """z (N, H', W', C') -> x (N, H, W, C). Exact up to float rounding."""
    validation.check_array_shape(z, self.arch.z_shape, 'z', self.arch.input_shape)
    pair = ops.split(jnp.asarray(z, blocks.param_dtype(self.arch.dtype)))
    for stage in reversed(self.stages):
      pair = stage.inverse(pair, train)
    return ops.psi_inverse(ops.merge(*pair), self.arch.init_ds)


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
    """The same network at float32 (float64 stays float64) and convolution precision
    'highest': what exact inversion needs (variables are shared). A net built for
    training in bfloat16 or at 'default' precision inverts with ~1e-3 / ~3e-4 error on
    GPUs; its exact twin to ~1e-6."""
    dtype = 'float64' if self.arch.dtype == 'float64' else 'float32'
    arch = dataclasses.replace(self.arch, dtype=dtype, precision='highest')
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
      raise ValueError("This model uses dropout: pass rngs={'dropout': key} to forward(train=True).")
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
    raise ValueError(f'train=True needs a batch (N, {", ".join(map(str, example_shape))}), '
                     f'got one example of shape {jnp.shape(a)}: batch statistics need a batch.')
  return jax.tree_util.tree_map(lambda out: out[0], fn(jnp.asarray(a)[None]))


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
