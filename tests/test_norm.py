"""BatchNorm (irevnet_jax.model.norm) against Flax's, and the ordered cross-device means it uses."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irevnet_jax.model import collectives, norm


@pytest.mark.parametrize('num_devices', [4, 3])
def test_ordered_mean_is_the_mean_with_the_same_bits_on_every_device(num_devices):
  rng = np.random.default_rng(0)
  scales = np.logspace(-3, 3, num_devices, dtype=np.float32)[:, None]
  x = rng.standard_normal((num_devices, 257)).astype(np.float32) * scales
  devices = jax.local_devices()[:num_devices]
  out = jax.pmap(lambda v: collectives.ordered_mean(v, 'i'), axis_name='i', devices=devices)(x)
  out = np.asarray(out)
  for row in out[1:]:
    np.testing.assert_array_equal(row, out[0])
  np.testing.assert_allclose(out[0], x.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)


def test_ordered_sum_of_a_pytree_and_native_fallback():
  x = {'a': np.arange(8, dtype=np.float32).reshape(4, 2), 'b': np.ones((4,), np.float32)}
  ordered = jax.pmap(lambda t: collectives.total(t, 'i'), axis_name='i')(x)
  native = jax.pmap(lambda t: collectives.total(t, 'i', ordered=False), axis_name='i')(x)
  for key in x:
    np.testing.assert_array_equal(np.asarray(ordered[key]), np.asarray(native[key]))
  np.testing.assert_array_equal(np.asarray(ordered['a'][0]), [12.0, 16.0])


def _both(x, train, **kwargs):
  """(ours, Flax's) outputs and variables on the same input and variables."""
  ours = norm.BatchNorm(use_running_average=not train, momentum=0.9, **kwargs)
  theirs = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=norm.EPSILON,
                        **kwargs)
  variables = theirs.init(jax.random.PRNGKey(0), x)
  variables = jax.tree_util.tree_map(
      lambda v: v + 0.3 * jax.random.uniform(jax.random.PRNGKey(1), v.shape, v.dtype), variables)
  results = []
  for module in (ours, theirs):
    y, updates = module.apply(variables, x, mutable=['batch_stats'])
    results.append((y, updates))
  return results


@pytest.mark.parametrize('train', [False, True])
def test_batchnorm_computes_what_flax_computes(train):
  x = 2.0 + jax.random.normal(jax.random.PRNGKey(2), (6, 5, 4, 3))
  (y, stats), (y_flax, stats_flax) = _both(x, train)
  np.testing.assert_allclose(y, y_flax, rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(stats_flax)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_batchnorm_variables_and_dtypes(x64):
  module = norm.BatchNorm(use_running_average=False, dtype='float64', param_dtype=jnp.float64)
  x = jnp.ones((2, 3, 3, 4), jnp.float64)
  variables = module.init(jax.random.PRNGKey(0), x)
  assert set(variables['params']) == {'scale', 'bias'}
  assert set(variables['batch_stats']) == {'mean', 'var'}
  assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(variables))
  y, _ = module.apply(variables, x, mutable=['batch_stats'])
  assert y.dtype == jnp.float64
  half = norm.BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
  out, _ = half.init_with_output(jax.random.PRNGKey(0), jnp.ones((2, 4), jnp.bfloat16))
  assert out.dtype == jnp.bfloat16


def test_synchronised_statistics_are_those_of_the_global_batch():
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 5, 3)) * 3.0 + 1.0
  module = norm.BatchNorm(use_running_average=False, axis_name='i')
  variables = norm.BatchNorm(use_running_average=False).init(jax.random.PRNGKey(0), x[0])

  def apply(shard):
    return module.apply(variables, shard, mutable=['batch_stats'])

  y, updates = jax.pmap(apply, axis_name='i')(x)
  y_global, updates_global = norm.BatchNorm(use_running_average=False).apply(
      variables, x.reshape(20, 3), mutable=['batch_stats'])
  np.testing.assert_allclose(np.asarray(y).reshape(20, 3), y_global, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['var'][0],
                             updates_global['batch_stats']['var'], rtol=1e-5)


# BN followed by ReLU: the fused op (bn_relu.batch_norm_relu, BatchNorm(relu=True)) against
# autodiff of BN then nn.relu (BatchNorm(relu=True, fused=False)).

def _bn_relu_loss(fused, dtype=None, param_dtype=jnp.float32, axis_name=None):
  """(x, params, stats, w) -> (sum(relu(BN(x)) * w), updated batch_stats)."""
  module = norm.BatchNorm(use_running_average=False, relu=True, fused=fused, dtype=dtype,
                          param_dtype=param_dtype, axis_name=axis_name)

  def loss(x, params, stats, w):
    y, updates = module.apply({'params': params, 'batch_stats': stats}, x,
                              mutable=['batch_stats'])
    return jnp.sum(y.astype(w.dtype) * w), updates['batch_stats']
  return loss


def _bn_relu_inputs(dtype, shape=(6, 5, 4, 3)):
  """x with channels of different means and spreads (one channel mostly below zero after
  BN: many ReLUs off), BN variables, loss weights."""
  channels = shape[-1]
  x = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32)
  x = x * jnp.linspace(0.5, 3.0, channels) + jnp.linspace(-1.0, 2.0, channels)
  params = {'scale': jnp.linspace(-1.5, 2.0, channels), 'bias': jnp.linspace(-0.5, 0.3, channels)}
  stats = {'mean': jnp.full((channels,), 0.2), 'var': jnp.full((channels,), 1.5)}
  w = jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float32)
  param_dtype = jnp.promote_types(dtype, jnp.float32)
  cast = lambda tree, d: jax.tree_util.tree_map(lambda a: a.astype(d), tree)
  return x.astype(dtype), cast(params, param_dtype), cast(stats, param_dtype), w.astype(param_dtype)


@pytest.mark.parametrize('dtype, out_dtype, rtol', [
    ('float64', None, 1e-13), ('float32', None, 2e-6), ('float32', 'bfloat16', 2e-6),
    ('bfloat16', 'bfloat16', 1e-2)])
def test_fused_bn_relu_gradients_equal_autodiff_of_bn_then_relu(dtype, out_dtype, rtol, x64):
  """Gradients at x, scale and bias, the output and the updated running statistics."""
  x, params, stats, w = _bn_relu_inputs(jnp.dtype(dtype))
  param_dtype = jnp.promote_types(dtype, jnp.float32)
  results = []
  for fused in (True, False):
    loss = _bn_relu_loss(fused, out_dtype, param_dtype)
    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    results.append(jax.tree_util.tree_map(np.asarray, value_and_grad(x, params, stats, w)))
  (fused, plain) = results
  for path, a in jax.tree_util.tree_flatten_with_path(fused)[0]:
    b = dict(jax.tree_util.tree_flatten_with_path(plain)[0])[path]
    assert a.dtype == b.dtype, path
    a, b = a.astype(np.float64), b.astype(np.float64)
    scale = np.abs(b).max()
    assert np.abs(a - b).max() <= rtol * scale, (
        f'{jax.tree_util.keystr(path)}: {np.abs(a - b).max():.3g} vs {scale:.3g}')
  grads = fused[1]
  assert grads[0].dtype == x.dtype and grads[1]['scale'].dtype == param_dtype


def _residual_bytes(fn, *args):
  """{'full': bytes of the residuals that jax.vjp keeps with x's element count or more,
  'small': of the others}."""
  _, fn_vjp = jax.vjp(fn, *args)
  saved = {'full': 0, 'small': 0}
  for leaf in jax.tree_util.tree_leaves(fn_vjp):
    saved['full' if leaf.size >= args[0].size else 'small'] += leaf.nbytes
  return saved


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_fused_bn_relu_saves_only_its_input_for_the_backward(dtype):
  """bfloat16 output (training): x in its own dtype and 4 per-channel vectors, where
  autodiff keeps float32 x, float32 x - mean, the mask and the output (11 bytes/element)."""
  x, params, stats, _ = _bn_relu_inputs(jnp.dtype(dtype), shape=(4, 6, 6, 8))
  saved = {}
  for fused in (True, False):
    module = norm.BatchNorm(use_running_average=False, relu=True, fused=fused, dtype='bfloat16')
    apply = lambda x, p: module.apply({'params': p, 'batch_stats': stats}, x,
                                      mutable=['batch_stats'])[0]
    saved[fused] = _residual_bytes(apply, x, params)
  assert saved[True] == {'full': x.nbytes, 'small': 4 * 4 * x.shape[-1]}
  assert saved[False]['full'] >= 11 * x.size


@pytest.mark.parametrize('ordered', [True, False], ids=['ordered', 'native'])
def test_fused_bn_relu_synchronised_gradients(ordered, x64):
  """Under pmap over 4 devices: the fused op's gradients equal autodiff of BN then ReLU
  with the same synchronised statistics, and the gradient at x equals that of the whole
  batch on one device (the statistics' dependence on every device's x included)."""
  num_devices = 4
  x, params, stats, w = _bn_relu_inputs(jnp.float64, shape=(num_devices * 2, 3, 3, 4))
  shard = lambda a: a.reshape(num_devices, -1, *a.shape[1:])

  def pmapped(fused):
    loss = _bn_relu_loss(fused, param_dtype=jnp.float64, axis_name='i')

    def step(x, w):
      with collectives.reductions(ordered):
        grads, new_stats = jax.grad(loss, argnums=(0, 1), has_aux=True)(x, params, stats, w)
      return grads[0], collectives.total(grads[1], 'i', ordered), new_stats

    return jax.tree_util.tree_map(np.asarray, jax.pmap(step, axis_name='i')(shard(x), shard(w)))

  fused, plain = pmapped(True), pmapped(False)
  for a, b in zip(jax.tree_util.tree_leaves(fused), jax.tree_util.tree_leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
  whole = jax.grad(_bn_relu_loss(True, param_dtype=jnp.float64), argnums=(0, 1),
                   has_aux=True)(x, params, stats, w)
  np.testing.assert_allclose(fused[0].reshape(x.shape), whole[0][0], rtol=1e-12, atol=1e-12)
  for key in ('scale', 'bias'):
    np.testing.assert_allclose(fused[1][key][0], whole[0][1][key], rtol=1e-12, atol=1e-12)
  for key in ('mean', 'var'):
    np.testing.assert_allclose(fused[2][key][0], whole[1][key], rtol=1e-12)


def test_fused_bn_relu_bfloat16_gradient_is_no_further_from_float64(x64):
  """bfloat16 input and output: the fused op rounds x's gradient once (autodiff of BN then
  ReLU rounds its direct and its statistics terms to bfloat16 apart and adds them).
  Measured: relative L2 from float64 autodiff on the same inputs 2.3e-3 fused, 2.9e-3 plain."""
  x, params, stats, w = _bn_relu_inputs(jnp.bfloat16, shape=(16, 8, 8, 32))
  as_dtype = lambda tree, d: jax.tree_util.tree_map(lambda a: a.astype(d), tree)

  def grad_x(fused, dtype, out_dtype):
    param_dtype = jnp.promote_types(dtype, jnp.float32)
    loss = _bn_relu_loss(fused, out_dtype, param_dtype)
    args = (x.astype(dtype), *as_dtype((params, stats, w), param_dtype))
    return np.asarray(jax.grad(loss, has_aux=True)(*args)[0], np.float64)

  exact = grad_x(False, jnp.float64, None)
  error = {fused: np.linalg.norm(grad_x(fused, jnp.bfloat16, jnp.bfloat16) - exact)
           / np.linalg.norm(exact) for fused in (True, False)}
  assert error[True] <= error[False] < 1e-2, error
