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
