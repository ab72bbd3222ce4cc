"""jax.export artifacts of a run: written from a checkpoint, called by a program without irevnet_jax."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import irevnet_jax
from irevnet_jax import baselines, export
from irevnet_jax.errors import UserError

# The consumer: jax and numpy only; irevnet_jax, flax and ml_collections cannot be imported.
from irevnet_jax.run import checkpoints
CONSUMER = """
import sys
for blocked in ('irevnet_jax', 'experiments', 'flax', 'ml_collections'):
  sys.modules[blocked] = None
import numpy as np
from jax import export
weights = dict(np.load('weights.npz'))
load = lambda name: export.deserialize(open(name + '.jax_export', 'rb').read())
x = np.load('x.npy')
logits, z = load('forward').call(weights, x)
x_again = load('invert').call(weights, z)
x_one = load('invert').call(weights, z[:1])      # the batch size is symbolic
np.savez('out.npz', logits=logits, z=z, x_again=x_again, x_one=x_one)
"""


@pytest.fixture(scope='module')
def exported(tiny_run, tmp_path_factory):
  workdir, _ = tiny_run
  directory = str(tmp_path_factory.mktemp('export'))
  manifest = export.export_run(str(workdir), directory)
  return workdir, directory, manifest


def test_a_program_without_irevnet_jax_computes_the_runs_z_and_inverts_it(exported):
  workdir, directory, manifest = exported
  config, variables, step = checkpoints.load_run(str(workdir))
  net = irevnet_jax.build(config.model).exact()
  x = np.asarray(jax.random.uniform(jax.random.PRNGKey(3), (5, *net.input_shape)))
  np.save(os.path.join(directory, 'x.npy'), x)
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  subprocess.run([sys.executable, '-c', CONSUMER], cwd=directory, env=env, check=True,
                 timeout=600)
  out = np.load(os.path.join(directory, 'out.npz'))
  logits, z = net.forward(variables, x)
  np.testing.assert_allclose(out['z'], z, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['logits'], logits, rtol=1e-5, atol=1e-5)
  error = np.linalg.norm(out['x_again'] - x) / np.linalg.norm(x)
  assert error < 1e-5, error
  np.testing.assert_allclose(out['x_one'], out['x_again'][:1], rtol=1e-5, atol=1e-6)
  assert manifest['step'] == step


def test_the_manifest_says_what_was_exported(exported):
  _, directory, manifest = exported
  assert {'forward.jax_export', 'invert.jax_export', 'manifest.json',
          'weights.npz'} <= set(os.listdir(directory))
  with open(os.path.join(directory, 'manifest.json')) as f:
    assert json.load(f) == manifest
  assert manifest['platforms'] == ['cpu', 'cuda', 'tpu']
  assert manifest['functions']['invert']['outputs'] == ['float32[b, 8, 8, 1]']
  weights = np.load(os.path.join(directory, 'weights.npz'))
  assert manifest['weights']['entries'] == len(weights.files)


def test_an_export_is_not_overwritten_and_platforms_are_checked(exported, tmp_path):
  workdir, directory, _ = exported
  with pytest.raises(UserError, match='--overwrite'):
    export.export_run(str(workdir), directory)
  net = irevnet_jax.build(irevnet_jax.presets.digits())
  variables = net.init(jax.random.PRNGKey(0), np.zeros((1, *net.input_shape), np.float32))
  with pytest.raises(ValueError, match='choose from'):
    export.export_net(net, variables, platforms=('gpu',))


def test_serialisation_without_flatbuffers_names_the_install(tmp_path):
  class WithoutFlatbuffers:   # jax.export's serialize where flatbuffers is not installed
    def serialize(self):
      raise ImportError("Please install 'flatbuffers' in order to use Exported serialization")
  with pytest.raises(UserError, match='needs flatbuffers .*: pip install flatbuffers') as error:
    export.save_artifacts({'forward': WithoutFlatbuffers()}, {}, str(tmp_path / 'out'))
  assert isinstance(error.value.__cause__, ImportError)
  assert not os.path.exists(tmp_path / 'out')   # nothing written


def test_a_baseline_exports_its_forward_only():
  config = baselines.resnet50()
  config.update(dict(input_shape=(8, 8, 1), stem='small', stem_width=8, units=(1, 1),
                     strides=(1, 2), widths=(4, 8), num_classes=10))
  net = irevnet_jax.build(config)
  variables = net.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))
  artifacts = export.export_net(net, variables, platforms=('cpu', 'tpu'))
  assert sorted(artifacts) == ['forward']
  x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 1)))
  logits, _ = artifacts['forward'].call(export.flat_weights(variables), x)
  np.testing.assert_allclose(logits, net.forward(variables, x)[0], rtol=1e-5, atol=1e-5)
