"""The bottleneck F and the i-RevNet block: the definition, and exact inverses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irevnet_jax.model import blocks, ops
from irevnet_jax.model.presets import layout

from model_utils import random_like, rel_error, tiny_config

# (input_shape, strides, widths): which stage-0 block they give.
CASES = {
    'stride1': ((4, 4, 16), (1,), (8,)),
    'stride2': ((4, 4, 8), (2,), (16,)),
    'injective': ((4, 4, 6), (1,), (8,)),
}


def _block(case, dtype, dropout=0.0):
  shape, strides, widths = CASES[case]
  arch = layout(tiny_config(input_shape=shape, init_ds=0, blocks=(1,), strides=strides,
                            widths=widths, dtype=dtype, dropout_rate=dropout))
  spec = arch.stages[0].first
  f = blocks.make_bottleneck(arch, spec)
  shapes = jax.eval_shape(lambda: blocks.init_bottleneck(f, spec, jax.random.PRNGKey(0)))
  variables = random_like(shapes, dtype=jnp.dtype(dtype))
  return spec, f, variables


def _pair(spec, dtype, n=3):
  x = jax.random.uniform(jax.random.PRNGKey(1), (n, *spec.spatial, spec.in_channels), dtype)
  return ops.split(x)


@pytest.mark.parametrize('case', sorted(CASES))
def test_block_forward_follows_the_definition(case):
  spec, f, variables = _block(case, 'float32')
  x1, x2 = _pair(spec, jnp.float32)
  f_fn = lambda u: blocks.apply_bottleneck(f, variables, u, False, None)
  (a, b), _ = jax.jit(lambda p: blocks.block_forward(spec, f_fn, p))((x1, x2))
  if spec.pad:
    x1, x2 = ops.split(ops.pad_channels(ops.merge(x1, x2), spec.pad))
  s = spec.stride
  np.testing.assert_array_equal(np.asarray(a), np.asarray(ops.psi(x2, s)))
  expected = jax.jit(f.apply)(variables, x2) + ops.psi(x1, s)
  np.testing.assert_allclose(np.asarray(b), np.asarray(expected), rtol=1e-6, atol=1e-6)
  assert a.shape[-1] == b.shape[-1] == spec.width


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('dtype,tol', [('float32', 1e-6), ('float64', 1e-12)])
def test_block_inverse_is_exact(case, dtype, tol, request):
  if dtype == 'float64':
    request.getfixturevalue('x64')
  spec, f, variables = _block(case, dtype)
  pair = _pair(spec, jnp.dtype(dtype))
  f_fn = lambda u: blocks.apply_bottleneck(f, variables, u, False, None)

  @jax.jit
  def round_trip(pair):
    out, _ = blocks.block_forward(spec, f_fn, pair)
    return blocks.block_inverse(spec, f_fn, out)

  back = round_trip(pair)
  for got, want in zip(back, pair):
    assert got.dtype == want.dtype
    assert rel_error(got, want) <= tol


def test_first_block_omits_the_leading_bn_relu():
  arch = layout(tiny_config(init_ds=0, input_shape=(4, 4, 6), blocks=(2,), strides=(1,),
                            widths=(8,)))
  def shapes(spec):
    f = blocks.make_bottleneck(arch, spec)
    return jax.eval_shape(lambda: blocks.init_bottleneck(f, spec, jax.random.PRNGKey(0)))

  first, rest = shapes(arch.stages[0].first), shapes(arch.stages[0].rest)
  count = lambda v: sum('BatchNorm' in k for k in v['params'])
  assert count(first) == 2 and count(rest) == 3


def test_strided_conv_pads_symmetrically():
  """A stride-2 3x3 conv sees output pixel (i, j) centred on input (2i, 2j), as PyTorch's padding=1."""
  kernel = jax.random.normal(jax.random.PRNGKey(0), (3, 3, 4, 4))
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 6, 6, 4))
  expected = jax.lax.conv_general_dilated(
      x, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision='highest')
  got = jax.lax.conv_general_dilated(
      x, kernel, (2, 2), blocks.centred_padding(3), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision='highest')
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
  # Flax's 'SAME' would pad (0, 1) here and shift the grid: the explicit padding matters.
  shifted = jax.lax.conv_general_dilated(
      x, kernel, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision='highest')
  assert not np.allclose(np.asarray(shifted), np.asarray(expected))


def test_bfloat16_F_keeps_float32_coupling_streams():
  spec, f, variables = _block('stride2', 'bfloat16')
  pair = _pair(spec, jnp.float32)
  f_fn = lambda u: blocks.apply_bottleneck(f, variables, u, False, None)
  out, _ = jax.jit(lambda p: blocks.block_forward(spec, f_fn, p))(pair)
  assert all(o.dtype == jnp.float32 for o in out)
  back = jax.jit(lambda p: blocks.block_inverse(spec, f_fn, p))(out)
  # The same bfloat16 F runs in both directions, so the float32 streams still invert closely.
  assert max(rel_error(g, w) for g, w in zip(back, pair)) < 1e-5
