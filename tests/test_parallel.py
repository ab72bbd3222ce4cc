"""The training program: precision policy (read off the compiled HLO), uint8 input,
pmap == jit + shard_map, and the evaluation's fixed inversion subset."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import irevnet_jax
from irevnet_jax.model import precision, presets
from irevnet_jax.train import config as config_lib
from irevnet_jax.train import evaluate, parallel, program, state as state_lib
import train_testlib as lib

CONV = re.compile(r'stablehlo\.convolution\(.*')


def _imagenet_config(**overrides):
  """experiments/configs/bijective.py shrunk to 32x32 and one block per stage, synthetic."""
  from experiments.configs import bijective
  config = bijective.get_config()
  config.model.input_shape = (32, 32, 3)
  config.model.blocks = (1, 1, 1, 1)
  config.dataset.name = 'synthetic'
  config.batch_size = 8
  config.eval_batch_size = 8
  for key, value in overrides.items():
    config[key] = value
  return config


def _program(config):
  prog = program.build_program(
      config, parallel.make_backend(config.parallel, jax.local_devices()[:1]))
  return prog, prog.source


def _convolutions(lowered):
  return CONV.findall(lowered.as_text())


def test_auto_trains_in_bfloat16_on_accelerators_and_float32_on_cpu(monkeypatch):
  config = _imagenet_config()
  assert config.train_dtype == 'auto' and config.train_precision == 'default'
  assert precision.resolved_train_dtype(config.train_dtype) == 'float32'          # this CPU
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert precision.resolved_train_dtype(config.train_dtype) == 'bfloat16'
  monkeypatch.setattr(jax, 'default_backend', lambda: 'tpu')
  assert precision.train_model_config(config.model, config.train_dtype,
                                      config.train_precision).dtype == 'bfloat16'


def test_train_step_is_bfloat16_at_default_precision_and_inversion_is_highest():
  prog, source = _program(_imagenet_config(train_dtype='bfloat16'))
  host_state = state_lib.host_zeros(prog.state_shapes)
  state = prog.backend.put_state(host_state)
  batch = prog.backend.put_batch(next(source.train_batches(8, 0, 1, 0, 0)))
  assert batch['image'].dtype == jnp.uint8            # uint8 reaches the step
  train_text = prog.train_step.lower(state, batch).as_text()
  assert re.search(r'tensor<1x8x32x32x3xui8>', train_text), 'the step takes uint8 images'
  convs = CONV.findall(train_text)
  assert convs and all('bf16' in c for c in convs), 'every training convolution in bfloat16'
  assert not any('HIGHEST' in c for c in convs)
  # The evaluation's inversion, and invert(): float32 convolutions at precision 'highest'.
  eval_batch = prog.backend.put_batch({'image': np.zeros((8, 32, 32, 3), np.uint8),
                                       'mask': np.ones((8,), np.float32)})
  inversion = CONV.findall(prog.inversion_step.lower(state, eval_batch).as_text())
  assert inversion and all('HIGHEST' in c and 'bf16' not in c for c in inversion)
  net = irevnet_jax.build(presets.bijective())          # what a user builds: exact by default
  z = jax.ShapeDtypeStruct((1, *net.z_shape), jnp.float32)
  variables = jax.eval_shape(net.init, jax.random.PRNGKey(0),
                             jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32))
  user_invert = CONV.findall(jax.jit(net.invert).lower(variables, z).as_text())
  assert user_invert and all('HIGHEST' in c for c in user_invert)


def test_float16_and_a_non_float32_model_dtype_are_refused():
  with pytest.raises(ValueError, match='train_dtype=.float16.*loss scaling'):
    config_lib.check_config(_imagenet_config(train_dtype='float16'))
  config = _imagenet_config()
  config.model.dtype = 'bfloat16'
  with pytest.raises(ValueError, match='model.dtype=.bfloat16.*train_dtype'):
    config_lib.check_config(config)


def test_pmap_and_shard_map_train_to_the_same_parameters(tmp_path):
  from irevnet_jax import train
  results = {}
  for backend in ('pmap', 'shard_map'):
    config = lib.make_config(parallel=backend, num_train_steps=6, checkpoint_every_steps=0,
                             log_every_steps=3)
    assert config.model.dropout_rate > 0
    results[backend] = train.train_and_evaluate(config, str(tmp_path / backend))
  lib.assert_trees_close(results['pmap'].state, results['shard_map'].state, rtol=1e-5,
                         atol=1e-7)
  assert results['pmap'].eval_metrics == pytest.approx(results['shard_map'].eval_metrics,
                                                       rel=1e-5)


@pytest.mark.parametrize('backend', ['pmap', 'shard_map'])
def test_the_cpu_train_step_keeps_the_engines_optimization_barriers(backend):
  """XLA:CPU drops every barrier unless compiled with irevnet_jax.compiler_options()
  (docs/reversible.md: slower autodiff steps without them): both back ends pass it."""
  config = lib.make_config(parallel=backend)
  assert config.model.backprop == 'autodiff'
  prog, source = _program(config)
  state = prog.backend.put_state(state_lib.create_state(prog.train_net, prog.tx, 0))
  batch = prog.backend.put_batch(next(source.train_batches(8, 0, 1, 0, 0)))
  step = prog.train_step
  compiled = step.compiled(state, batch) if backend == 'pmap' else step.lower(state, batch).compile()
  blocks = sum(config.model.blocks)
  assert compiled.as_text().count('opt-barrier') >= blocks, 'barriers removed before fusion'
  default = step.lower(state, batch).compile(compiler_options={'xla_disable_hlo_passes': ''})
  assert 'opt-barrier' not in default.as_text()   # what XLA:CPU does without the option


def test_inversion_subset_is_fixed_and_evaluation_reports_it():
  subset = evaluate.inversion_subset(359, 50, seed=0)
  assert len(subset) == 50 and len(set(subset)) == 50 and np.all(np.diff(subset) > 0)
  np.testing.assert_array_equal(subset, evaluate.inversion_subset(359, 50, seed=0))
  assert not np.array_equal(subset, evaluate.inversion_subset(359, 50, seed=1))
  np.testing.assert_array_equal(evaluate.inversion_subset(359, -1, 0), np.arange(359))

  config = lib.make_config()
  prog, source = _program(config)
  state = prog.backend.put_state(state_lib.create_state(prog.train_net, prog.tx, 0))
  first = evaluate.evaluate(prog, state, source, 64, inversion_examples=50, seed=0)
  again = evaluate.evaluate(prog, state, source, 64, inversion_examples=50, seed=0)
  every = evaluate.evaluate(prog, state, source, 64, inversion_examples=-1, seed=0)
  assert first == again
  assert first['eval/inversion_examples'] == 50 and every['eval/inversion_examples'] == 359
  assert first['eval/num_examples'] == every['eval/num_examples'] == 359
  assert first['eval/loss'] == every['eval/loss']          # loss and accuracy: whole split
  assert 0 < first['eval/inversion_rel_error'] < 1e-5
  assert first['eval/inversion_rel_error'] != every['eval/inversion_rel_error']
