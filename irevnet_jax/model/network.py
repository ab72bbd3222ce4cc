"""The i-RevNet Flax module: stages of reversible blocks between psi and the head.

    x (N, H, W, C) -> psi(init_ds) -> split -> stages of blocks -> merge -> z
    logits = Dense(mean_HW(ReLU(BN(z))))

Only the head discards information; `IRevNet.invert` maps z back to x. The stages run
on the reversible engine (`irevnet_jax.model.reversible`). Users reach it through
`irevnet_jax.build` and `irevnet_jax.Net` (`irevnet_jax/nets.py`).
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from irevnet_jax.model import blocks, norm, ops, reversible, validation
from irevnet_jax.model.layout import Architecture, StageSpec


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
        axis_name=self.bn_axis_name, relu=True, fused=self.arch.fused_bn_relu)
    self.classifier = nn.Dense(self.arch.num_classes, dtype=self.arch.dtype,
                               param_dtype=stream, kernel_init=blocks.torch_default_init)

  def __call__(self, x, train: bool = False):
    """x (N, H, W, C) -> (logits (N, num_classes), z (N, H', W', C')).

    logits are float32 (float64 in a float64 model) whatever F computes in; z has the
    coupling streams' dtype (`blocks.stream_dtype`: float32 unless model.stream_dtype asks
    for bfloat16 in a bfloat16 model).
    """
    validation.check_array_shape(x, self.arch.input_shape, 'x', self.arch.input_shape)
    pair = ops.split(ops.psi(jnp.asarray(x, blocks.stream_dtype(self.arch)), self.arch.init_ds))
    for stage in self.stages:
      pair = stage(pair, train)
    z = ops.merge(*pair)
    h = self.head_norm(z, use_running_average=not train)
    logits = self.classifier(jnp.mean(h, axis=(1, 2)))
    return logits.astype(blocks.param_dtype(self.arch.dtype)), z

  def invert(self, z, train: bool = False):
    """z (N, H', W', C') -> x (N, H, W, C). Exact up to float rounding."""
    validation.check_array_shape(z, self.arch.z_shape, 'z', self.arch.input_shape)
    pair = ops.split(jnp.asarray(z, blocks.stream_dtype(self.arch)))
    for stage in reversed(self.stages):
      pair = stage.inverse(pair, train)
    return ops.psi_inverse(ops.merge(*pair), self.arch.init_ds)
