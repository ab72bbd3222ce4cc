"""Helpers shared by the model tests."""
import jax
import jax.numpy as jnp
import numpy as np

import irevnet_jax

# XLA:CPU compiles ~2.5x faster without LLVM optimisation (the same arithmetic), and keeps
# the engine's optimization barriers as the runner does (irevnet_jax.compiler_options).
FAST_COMPILE = {'xla_backend_optimization_level': 0, **irevnet_jax.compiler_options('cpu')}


def random_variables(net, seed=0, dtype=np.float32):
  """Random variables for `net` drawn with NumPy from `net.init`'s shapes (no init compile)."""
  x = jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32)
  return random_like(jax.eval_shape(net.init, jax.random.PRNGKey(0), x), seed, dtype)


def random_like(shapes, seed=0, dtype=np.float32):
  """Random values for a tree of variable shapes.

  Kernels are uniform with PyTorch's default scale (as `net.init`); BN gets
  non-trivial parameters and running statistics (variances in [0.5, 2]).
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'var':
      value = rng.uniform(0.5, 2.0, leaf.shape)
    elif name in ('mean', 'bias'):
      value = rng.normal(0.0, 0.1, leaf.shape)
    elif name == 'scale':
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:  # kernels: (..., fan_in, fan_out), stacked blocks have a leading axis
      fan_in = int(np.prod(leaf.shape[-4:-1] if len(leaf.shape) >= 4 else leaf.shape[-2:-1]))
      bound = 1.0 / np.sqrt(fan_in)
      value = rng.uniform(-bound, bound, leaf.shape)
    return jnp.asarray(value, dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def rel_error(a, b):
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def tiny_config(**overrides):
  """A small model config with every kind of block: psi stem, injective, stride 1 and 2."""
  c = irevnet_jax.presets.base()
  c.input_shape = (8, 8, 2)
  c.init_ds = 2                 # 8x8x2 -> 4x4x8
  c.blocks = (2, 2)
  c.strides = (1, 2)
  c.widths = (8, 32)            # stage 0 pads 8 -> 16 channels; stage 1 psi: 16 -> 2 x 32
  c.num_classes = 5
  for k, v in overrides.items():
    c[k] = v
  return c


def assert_same_state_dict(got, expected):
  """Same keys in the same order, and per key the same shape, dtype and values."""
  assert list(got) == list(expected)
  for key, value in expected.items():
    assert np.shape(got[key]) == np.shape(value), key
    assert np.asarray(got[key]).dtype == np.asarray(value).dtype, key
    np.testing.assert_array_equal(got[key], value, err_msg=key)
