"""The whole network: exact inversion, the public API under transformations, parameter counts."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import irevnet_jax
from irevnet_jax.model import presets

from model_utils import random_variables, rel_error, tiny_config


def _setup(config, n=4, seed=0):
  """The net, random variables with non-trivial BN statistics, and inputs in [0, 1]."""
  net = irevnet_jax.build(config)
  dtype = np.float64 if config.dtype == 'float64' else np.float32
  x = jnp.asarray(np.random.default_rng(seed).uniform(size=(n, *net.input_shape)), dtype)
  return net, random_variables(net, seed, dtype), x


def test_init_gives_params_and_fresh_batch_stats():
  net = irevnet_jax.build(tiny_config())
  variables = net.init(jax.random.PRNGKey(0), jnp.zeros((2, *net.input_shape)))
  assert set(variables) == {'params', 'batch_stats'}
  stats = variables['batch_stats']['stages_0']['rest']['BatchNorm_0']
  assert stats['var'].shape == (1, 8)   # stacked: one alike block after the leading one
  np.testing.assert_array_equal(stats['var'], 1.0)
  np.testing.assert_array_equal(stats['mean'], 0.0)
  logits, z = net.forward(variables, jnp.ones((2, *net.input_shape)))
  assert logits.shape == (2, 5)


def _bijective_config():
  return tiny_config(blocks=(1, 2), strides=(2, 2), widths=(16, 64))


def test_forward_shapes_and_bijective_representation():
  net, variables, x = _setup(_bijective_config())
  logits, z = jax.jit(net.forward)(variables, x)
  assert logits.shape == (4, 5) and logits.dtype == jnp.float32
  assert z.shape == (4, *net.z_shape) == (4, 1, 1, 128)
  assert z[0].size == x[0].size   # no injective padding: z has exactly the input's size


@pytest.mark.parametrize('dtype,tol', [('float32', 1e-6), ('float64', 1e-12)])
def test_network_inverse_is_exact(dtype, tol, request):
  if dtype == 'float64':
    request.getfixturevalue('x64')
  net, variables, x = _setup(tiny_config(dtype=dtype))
  assert net.arch.stages[0].first.pad > 0   # the config covers injective, stride 1 and 2
  round_trip = jax.jit(lambda v, x: net.invert(v, net.forward(v, x)[1]))
  x_back = round_trip(variables, x)
  assert x_back.dtype == x.dtype
  assert rel_error(x_back, x) <= tol


@pytest.mark.compile_heavy   # a step of .ci/run of its own (setup.cfg), not the README's command
def test_cifar10_model_at_full_depth_inverts_in_float32():
  net, variables, x = _setup(presets.cifar10(), n=2)
  assert net.arch.num_blocks == 54
  z = jax.jit(net.forward)(variables, x)[1]
  x_back = jax.jit(net.invert)(variables, z)
  assert rel_error(x_back, x) <= 1e-6


@pytest.mark.parametrize('dtype,tol', [('float32', 1e-5), ('float64', 1e-10)])
def test_batch_statistics_inverse_recovers_a_train_mode_forward(dtype, tol, request):
  """The reversible backprop relies on this: F re-evaluated with batch statistics."""
  if dtype == 'float64':
    request.getfixturevalue('x64')
  config = tiny_config(dtype=dtype, input_shape=(8, 8, 4), dropout_rate=0.2)
  net, variables, x = _setup(config, n=8)
  rngs = {'dropout': jax.random.PRNGKey(7)}

  @jax.jit
  def round_trip(v, x):
    (_, z), new_state = net.forward(v, x, train=True, rngs=rngs)
    return net.invert(v, z, train=True, rngs=rngs), new_state

  x_back, new_state = round_trip(variables, x)
  assert rel_error(x_back, x) <= tol
  # The forward did update the running statistics (the inverse only reads them).
  old = jax.tree_util.tree_leaves(variables['batch_stats'])
  new = jax.tree_util.tree_leaves(new_state['batch_stats'])
  assert any(not np.allclose(a, b) for a, b in zip(old, new))


def test_train_mode_forward_needs_a_dropout_key():
  net, variables, x = _setup(tiny_config(dropout_rate=0.1))
  with pytest.raises(ValueError, match="rngs=\\{'dropout'"):
    net.forward(variables, x, train=True)


@pytest.fixture(scope='module')
def model():
  net, variables, x = _setup(_bijective_config(), n=4)
  z = jax.jit(net.forward)(variables, x)[1]
  return net, variables, x, z


class TestInvertUnderTransformations:

  def test_jit_matches_eager(self, model):
    net, variables, x, z = model
    np.testing.assert_allclose(jax.jit(net.invert)(variables, z), net.invert(variables, z),
                               rtol=1e-5, atol=1e-6)

  def test_vmap_over_a_stack_of_batches(self, model):
    net, variables, x, z = model
    zs = jnp.stack([z, 2 * z, -z])
    xs = jax.jit(jax.vmap(net.invert, in_axes=(None, 0)))(variables, zs)
    for i in range(3):
      np.testing.assert_allclose(xs[i], jax.jit(net.invert)(variables, zs[i]),
                                 rtol=1e-5, atol=1e-5)
    assert rel_error(xs[0], x) <= 1e-6

  def test_grad_through_invert(self, model):
    """In a bijective net forward o invert is the identity on z: grad <forward(invert(z)), v> = v."""
    net, variables, x, z = model
    v = jax.random.normal(jax.random.PRNGKey(3), z.shape)
    g = jax.jit(jax.grad(lambda z: jnp.vdot(net.forward(variables, net.invert(variables, z))[1],
                                            v)))(z)
    assert rel_error(g, v) <= 1e-4

  def test_pmap_over_four_devices(self, model):
    net, variables, x, z = model
    assert jax.local_device_count() >= 4
    zs = z.reshape(4, 1, *z.shape[1:])
    xs = jax.pmap(net.invert, in_axes=(None, 0))(variables, zs)
    assert rel_error(xs.reshape(x.shape), x) <= 1e-6


def test_vmap_over_single_examples_equals_the_batched_call():
  net, variables, x = _setup(tiny_config())
  logits, z = net.forward(variables, x)
  one_logits, one_z = jax.vmap(net.forward, in_axes=(None, 0))(variables, x)
  np.testing.assert_allclose(one_logits, logits, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(one_z, z, rtol=1e-6, atol=1e-6)
  x_back = jax.vmap(net.invert, in_axes=(None, 0))(variables, z)
  np.testing.assert_allclose(x_back, net.invert(variables, z), rtol=1e-6, atol=1e-6)
  assert net.invert(variables, z[0]).shape == net.input_shape
  with pytest.raises(ValueError, match='needs a batch'):
    net.invert(variables, z[0], train=True)


@pytest.mark.parametrize('name', ['cifar10', 'injective'])
def test_exact_twin_is_the_float32_highest_build(name):
  from irevnet_jax.baselines import presets as baseline_presets
  from irevnet_jax.model import precision
  configs = [getattr(presets, name)(), baseline_presets.revnet56()]
  for config in configs:
    with config.unlocked():
      config.dtype, config.precision = 'bfloat16', 'default'
    exact = irevnet_jax.build(config).exact()
    assert exact.arch == irevnet_jax.build(precision.exact_model_config(config)).arch
    assert (exact.arch.dtype, exact.arch.precision) == ('float32', 'highest')


def test_init_compiles_once_for_calls_of_one_shape():
  net = irevnet_jax.build(tiny_config())
  for seed in range(3):
    net.init(jax.random.PRNGKey(seed), jnp.zeros((2, *net.input_shape)))
  assert net._init._cache_size() == 1   # pylint: disable=protected-access


def test_wrong_input_shape_is_a_clear_error():
  net, variables, x = _setup(tiny_config())
  with pytest.raises(ValueError, match='input_shape'):
    net.forward(variables, jnp.zeros((2, 16, 16, 2)))
  with pytest.raises(ValueError, match='z must have shape'):
    net.invert(variables, jnp.zeros((2, 3, 3, 3)))


@pytest.mark.parametrize('name,expected', [
    ('cifar10', 6_274_826),
    ('bijective', 29_201_092),
    ('bijective_released', 125_120_356),
    ('injective', 193_465_960),
])
def test_parameter_counts(name, expected):
  assert irevnet_jax.count_params(irevnet_jax.build(presets.PRESETS[name]())) == expected


def test_injective_reconstruction_closest_to_the_papers_181M():
  assert irevnet_jax.count_params(irevnet_jax.build(presets.injective(62))) == 181_819_706


def test_importing_the_model_does_not_import_tensorflow():
  code = ('import sys, jax, irevnet_jax\n'
          'net = irevnet_jax.build(irevnet_jax.presets.digits())\n'
          'x = jax.ShapeDtypeStruct((1, 8, 8, 1), "float32")\n'
          'v = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)\n'
          'z = jax.eval_shape(net.forward, v, x)[1]\n'
          'jax.eval_shape(net.invert, v, z)\n'
          'assert "tensorflow" not in sys.modules, "tensorflow was imported"\n')
  subprocess.run([sys.executable, '-c', code], check=True)


@pytest.mark.parametrize('backprop', ['autodiff', 'reversible', 'remat'])
def test_float64_model_keeps_float64_everywhere(backprop, x64):
  """Logits, z, the inverse, every parameter and BN running statistic, the updated statistics
  and the gradients of a float64 model are float64 (issue 12, item 5). Dtypes are fixed at
  trace time, so `jax.eval_shape` shows them without compiling."""
  net = irevnet_jax.build(tiny_config(dtype='float64', backprop=backprop, dropout_rate=0.1))
  x = jax.ShapeDtypeStruct((4, *net.input_shape), jnp.float64)
  variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
  dtypes = lambda tree: {str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(tree)}
  assert dtypes(variables['params']) == dtypes(variables['batch_stats']) == {'float64'}
  logits, z = jax.eval_shape(net.forward, variables, x)
  assert logits.dtype == z.dtype == jax.eval_shape(net.invert, variables, z).dtype == jnp.float64

  def loss(params, batch_stats, x):
    (logits, _), state = net.forward({'params': params, 'batch_stats': batch_stats}, x,
                                     train=True, rngs={'dropout': jax.random.PRNGKey(1)})
    return jnp.sum(logits), state

  grads, state = jax.eval_shape(jax.grad(loss, has_aux=True), variables['params'],
                                variables['batch_stats'], x)
  assert dtypes(grads) == dtypes(state['batch_stats']) == {'float64'}
