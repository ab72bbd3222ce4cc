"""The fused BN-ReLU-convolution kernel (irevnet_jax.model.pallas_conv) against plain JAX.

On CPU the kernel runs in Pallas's interpreter: the same kernel program, its tiles, masks
and float32 accumulation, executed by XLA:CPU. Shapes are small (the interpreter is slow)
but cover k = 1 and 3, several row tiles with a partial last one, several input-channel
chunks and output-channel tiles, and padding taps whose activation is not zero.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import irevnet_jax
from irevnet_jax.model import bn_relu, collectives, pallas_conv
from model_utils import FAST_COMPILE, random_variables, rel_error, tiny_config

EPS = 1e-5
# (x shape, C_out, k, tiles): defaults, then 4 row tiles (the last partial), 2 input-channel
# chunks and 2 output-channel tiles (the last partial).
CASES = {'k1': ((2, 8, 8, 8), 6, 1, None), 'k3': ((2, 8, 8, 8), 6, 3, None),
         'k3_tiled': ((2, 5, 5, 24), 20, 3, (16, 16, 16))}


def _inputs(shape, c_out, k, dtype, seed=0):
  """x, per-channel numbers (mean, inv_std, scale, bias) and a kernel; bias > mean * inv_std
  * scale in some channels, so the activation of a zero input (the padding) is not zero."""
  rng = np.random.default_rng(seed)
  c = shape[-1]
  x = rng.standard_normal(shape) * np.linspace(0.5, 2.0, c) + np.linspace(-1.0, 1.0, c)
  stats = (rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c), rng.uniform(-1.5, 1.5, c),
           rng.normal(0.2, 0.5, c))
  kernel = rng.uniform(-1, 1, (k, k, c, c_out)) / np.sqrt(k * k * c)
  cast = lambda a: jnp.asarray(a, dtype)
  return cast(x), tuple(map(cast, stats)), cast(kernel)


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_kernel_forward_equals_plain_jax(case, dtype):
  shape, c_out, k, tiles = CASES[case]
  x, stats, kernel = _inputs(shape, c_out, k, jnp.float32)
  at_zero = bn_relu.activate(jnp.zeros(shape[-1]), *stats, jnp.float32)
  assert float(at_zero.max()) > 0.1      # a kernel that pads x instead of a would be wrong
  fused = jax.jit(lambda *a: pallas_conv._pallas(*a, jnp.dtype(dtype), 'highest', tiles))
  y = fused(x, *stats, kernel)
  expected = pallas_conv.reference(x, *stats, kernel, jnp.dtype(dtype), 'highest')
  assert y.dtype == expected.dtype == jnp.dtype(dtype) and y.shape == (*shape[:3], c_out)
  y, expected = np.asarray(y, np.float64), np.asarray(expected, np.float64)
  # bfloat16: both round the float32 sum once; the sums' order differs.
  tol = 1e-6 if dtype == 'float32' else 2 ** -8
  np.testing.assert_allclose(y, expected, rtol=tol, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize('case', ['k1', 'k3_tiled'])
def test_kernel_forward_float64(case, x64):
  shape, c_out, k, tiles = CASES[case]
  x, stats, kernel = _inputs(shape, c_out, k, jnp.float64)
  y = pallas_conv._pallas(x, *stats, kernel, jnp.dtype(jnp.float64), 'highest', tiles)
  expected = pallas_conv.reference(x, *stats, kernel, jnp.float64, 'highest')
  assert y.dtype == jnp.float64
  np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13)


def _plain_train(x, scale, bias, kernel, dtype, axis_name=None):
  """Autodiff's reference: BN with batch statistics, ReLU and the convolution, in plain JAX."""
  mean, var = bn_relu.batch_moments(x, axis_name)
  y = pallas_conv.reference(x, mean, jax.lax.rsqrt(var + EPS), scale, bias, kernel, dtype,
                            'highest')
  return y, mean, var


def _fused_train(x, scale, bias, kernel, dtype, axis_name=None):
  return pallas_conv.batch_norm_relu_conv(x, scale, bias, kernel, epsilon=EPS, dtype=dtype,
                                          precision='highest', axis_name=axis_name)


def _loss(op, dtype, axis_name=None):
  def loss(x, scale, bias, kernel, w):
    y, mean, var = op(x, scale, bias, kernel, dtype, axis_name)
    return jnp.sum(y.astype(w.dtype) * w), (mean, var)
  return loss


@pytest.mark.parametrize('dtype, rtol', [('float32', 1e-5), ('float64', 1e-12)])
@pytest.mark.parametrize('case', ['k1', 'k3'])
def test_training_gradients_equal_autodiff_of_the_plain_path(case, dtype, rtol, request):
  """Gradients at x, scale, bias and the kernel (the batch statistics' share included),
  and the statistics for the running averages."""
  if dtype == 'float64':
    request.getfixturevalue('x64')
  shape, c_out, k, _ = CASES[case]
  x, (_, _, scale, bias), kernel = _inputs(shape, c_out, k, jnp.dtype(dtype))
  w = jnp.asarray(np.random.default_rng(5).standard_normal((*shape[:3], c_out)), dtype)
  results = [jax.jit(jax.grad(_loss(op, jnp.dtype(dtype)), argnums=(0, 1, 2, 3),
                              has_aux=True))(x, scale, bias, kernel, w)
             for op in (_fused_train, _plain_train)]
  (grads, stats), (grads_ad, stats_ad) = results
  for name, g, g_ad in zip(('x', 'scale', 'bias', 'kernel'), grads, grads_ad):
    assert g.dtype == g_ad.dtype, name
    assert rel_error(g, g_ad) <= rtol, (name, rel_error(g, g_ad))
  for s, s_ad in zip(stats, stats_ad):
    np.testing.assert_array_equal(s, s_ad)


def test_evaluation_op_gradients_equal_autodiff():
  """Given statistics (evaluation): gradients at every argument."""
  x, stats, kernel = _inputs(*CASES['k3'][:3], jnp.float32)
  w = jnp.asarray(np.random.default_rng(5).standard_normal((2, 8, 8, 6)), jnp.float32)
  fused = lambda *a: jnp.sum(pallas_conv.normalise_relu_conv(*a, precision='highest') * w)
  plain = lambda *a: jnp.sum(pallas_conv.reference(*a, jnp.float32, 'highest') * w)
  argnums = tuple(range(6))
  grads = jax.jit(jax.grad(fused, argnums))(x, *stats, kernel)
  grads_ad = jax.grad(plain, argnums)(x, *stats, kernel)
  for g, g_ad in zip(grads, grads_ad):
    assert rel_error(g, g_ad) <= 1e-5


def test_backward_keeps_only_x_per_channel_numbers_and_the_kernel():
  x, (_, _, scale, bias), kernel = _inputs(*CASES['k3'][:3], jnp.bfloat16)
  scale, bias, kernel = (a.astype(jnp.float32) for a in (scale, bias, kernel))
  _, fn_vjp = jax.vjp(lambda *a: _fused_train(*a, jnp.bfloat16)[0], x, scale, bias, kernel)
  saved = sorted((leaf.shape, leaf.dtype.name) for leaf in jax.tree_util.tree_leaves(fn_vjp))
  channels = ((8,), 'float32')
  assert saved == sorted([(x.shape, 'bfloat16'), (kernel.shape, 'float32'), *[channels] * 4])


def test_synchronised_gradients_equal_those_of_the_whole_batch(x64):
  """Under pmap over 2 devices, with ordered statistics: the gradient at x equals that of
  the whole batch on one device (the statistics' dependence on every device's x included)."""
  x, (_, _, scale, bias), kernel = _inputs((4, 4, 4, 8), 6, 3, jnp.float64)
  w = jnp.asarray(np.random.default_rng(5).standard_normal((4, 4, 4, 6)), jnp.float64)
  loss = _loss(_fused_train, jnp.float64, axis_name='i')

  def step(x, w):
    with collectives.reductions(True):
      return jax.grad(loss, argnums=(0, 3), has_aux=True)(x, scale, bias, kernel, w)[0]

  shard = lambda a: a.reshape(2, -1, *a.shape[1:])
  g_x, g_kernel = jax.pmap(step, axis_name='i', devices=jax.local_devices()[:2])(shard(x),
                                                                                   shard(w))
  whole = jax.grad(_loss(_plain_train, jnp.float64), argnums=(0, 3), has_aux=True)(
      x, scale, bias, kernel, w)[0]
  np.testing.assert_allclose(np.reshape(g_x, x.shape), whole[0], rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(g_kernel.sum(0), whole[1], rtol=1e-12, atol=1e-12)


def _net_loss_and_grads(net, variables, x):
  w = jnp.asarray(np.random.default_rng(3).standard_normal((x.shape[0], *net.z_shape)),
                  x.dtype)

  def loss(params, x):
    (logits, z), state = net.forward({**variables, 'params': params}, x, train=True,
                                     rngs={'dropout': jax.random.PRNGKey(4)})
    value = jnp.mean(jax.nn.log_softmax(logits)[:, 0]) + jnp.mean(z * w)
    return value, state['batch_stats']

  return _jitted(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), variables['params'], x)


def _jitted(fn, *args):
  """fn(*args) under jax.jit, compiled with FAST_COMPILE (compiles dominate the net tests)."""
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def test_tiny_irevnet_same_loss_gradients_and_inverse(x64):
  """fused_kernel='pallas' against 'none', in float64: the same variables, loss, gradients
  (parameters and input) and running statistics; and it still inverts (evaluation mode).
  Kernels (1, 3, 1), the paper's: fewer taps for the interpreter to compile. Autodiff only
  (the reversible and remat engines call the same F; reversible passed when run once by
  hand, left out for the suite's time)."""
  backprop = 'autodiff'
  config = lambda kind: tiny_config(fused_kernel=kind, backprop=backprop, dropout_rate=0.1,
                                    blocks=(1, 2), kernel_sizes=(1, 3, 1), dtype='float64')
  nets = {kind: irevnet_jax.build(config(kind)) for kind in ('none', 'pallas')}
  image = jax.ShapeDtypeStruct((1, *nets['none'].input_shape), jnp.float64)
  shapes = {kind: jax.eval_shape(net.init, jax.random.PRNGKey(0), image)
            for kind, net in nets.items()}
  assert shapes['pallas'] == shapes['none']
  variables = random_variables(nets['none'], dtype=np.float64)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(4, *nets['none'].input_shape)))
  assert 'pallas_call' in str(jax.make_jaxpr(nets['pallas'].forward)(variables, x))
  assert 'pallas_call' not in str(jax.make_jaxpr(nets['none'].forward)(variables, x))

  ((value, stats), grads), ((value_ref, stats_ref), grads_ref) = (
      _net_loss_and_grads(nets[kind], variables, x) for kind in ('pallas', 'none'))
  np.testing.assert_allclose(value, value_ref, rtol=1e-13)
  for path, g_ref in jax.tree_util.tree_flatten_with_path(grads_ref)[0]:
    g = dict(jax.tree_util.tree_flatten_with_path(grads)[0])[path]
    # The first block's F sees only the injective zero padding: ReLU'(0) = 0, zero gradients.
    scale = np.linalg.norm(g_ref) if np.any(g_ref) else 1.0
    assert np.linalg.norm(np.asarray(g) - g_ref) <= 1e-11 * scale, jax.tree_util.keystr(path)
  for a, b in zip(jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(stats_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)

  net = nets['pallas']
  x_back = _jitted(lambda v, x: net.invert(v, net.forward(v, x)[1]), variables, x)
  assert rel_error(x_back, x) <= 1e-13


def test_kernel_lowers_through_pallas_triton_for_cuda(monkeypatch):
  """Built as on a GPU, the kernel lowers to a Triton custom call for cuda on this machine
  (Triton's own compile to PTX happens only on a GPU); ImageNet stage-0 shapes."""
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  fn = jax.jit(lambda *a: pallas_conv.normalise_relu_conv(*a, dtype=jnp.bfloat16))
  per_channel = jax.ShapeDtypeStruct((24,), jnp.float32)
  args = (jax.ShapeDtypeStruct((8, 56, 56, 24), jnp.float32), *[per_channel] * 4,
          jax.ShapeDtypeStruct((3, 3, 24, 24), jnp.float32))
  triton = '__gpu$xla.gpu.triton'
  exported = export.export(fn, platforms=['cuda'], disabled_checks=[
      export.DisabledSafetyCheck.custom_call(triton)])(*args)
  assert exported.mlir_module().count(f'@{triton}') == 1


def test_other_back_ends_are_refused_in_one_line_naming_the_fix(monkeypatch):
  x, stats, kernel = _inputs(*CASES['k1'][:3], 'float32')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'tpu')
  with pytest.raises(irevnet_jax.UserError, match=r"not on 'tpu': use model.fused_kernel='none'"):
    pallas_conv.normalise_relu_conv(x, *stats, kernel)
