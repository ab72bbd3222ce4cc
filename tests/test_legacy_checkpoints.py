"""Checkpoints written before RevNet ran on the shared engine still restore and compute the same.

The fixtures under tests/fixtures/legacy_<name>/ were written by commit 58befe3
(`tests/fixtures/make_legacy_checkpoints.py`): a tiny i-RevNet and a tiny RevNet,
each a run's workdir (config.json + an Orbax checkpoint) and the eval-mode
outputs of a stored batch.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import irevnet_jax
from irevnet_jax.run import checkpoints

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')


def _paths_and_shapes(tree):
  return {jax.tree_util.keystr(p): tuple(np.shape(a))
          for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize('name', ['irevnet', 'revnet'])
def test_checkpoint_written_by_the_old_code_restores_and_runs(name):
  workdir = os.path.join(FIXTURES, f'legacy_{name}')
  config, variables, step = checkpoints.load_run(workdir)
  assert step == 7
  net = irevnet_jax.build(config.model)
  expected = np.load(os.path.join(workdir, 'expected.npz'))
  # Exactly today's variable tree: same paths, same shapes.
  x = jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32)
  fresh = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
  assert _paths_and_shapes(variables) == _paths_and_shapes(fresh)
  logits, z = jax.jit(net.forward)(variables, jnp.asarray(expected['x']))
  np.testing.assert_allclose(np.asarray(logits), expected['logits'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(z), expected['z'], rtol=1e-5, atol=1e-6)
