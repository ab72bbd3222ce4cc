"""The train step's memory, checked from the compiled step before a run reads or writes
anything (irevnet_jax/train/memory_fit.py): a step that does not fit ends in one line naming
what fits, `model.backprop='auto'` picks the mode that fits, `device_memory_gib` overrides.

The CIFAR-10 config on synthetic data, shrunk to two stages of 4 blocks at 16x16 so that it
compiles in seconds; at batch 64 on the suite's 4 CPU devices (which share the host's
memory) its step needs ~25 MiB with autodiff and ~10 MiB with reversible backprop (the full
CIFAR-10 model on one device: 1.16 GiB and 0.18 GiB, docs/training.md).
"""
import ast
import os
import re

import jax
import ml_collections
import pytest

from experiments.configs import cifar10
from irevnet_jax import train
from irevnet_jax.data import input_pipeline
from irevnet_jax.run import run_config
from irevnet_jax.train import memory_fit, parallel, program, state as state_lib
import in_process
import train_testlib as lib

CIFAR10 = os.path.join(lib.REPO, 'experiments', 'configs', 'cifar10.py')
SMALL = {'dataset.name': 'synthetic', 'model.input_shape': '(16,16,3)',
         'model.blocks': '(4,4)', 'model.strides': '(1,2)', 'model.widths': '(8,32)',
         'batch_size': 64, 'num_train_steps': 1}
TIGHT_GIB = 0.02   # 20.5 MiB: autodiff's ~25 MiB does not fit, reversible's ~10 MiB does
LOOSE_GIB = 1.0


def small_config(**fields) -> ml_collections.ConfigDict:
  """The CIFAR-10 config with SMALL and then `fields` ('a.b' keys as a__b)."""
  config = cifar10.get_config()
  for key, value in {**SMALL, **{k.replace('__', '.'): v for k, v in fields.items()}}.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = ast.literal_eval(value) if str(value).startswith('(') else value
  return config


def fitting(config):
  """memory_fit.fitting_program of `config` as the runner calls it (4 devices)."""
  prog = program.build_program(config, parallel.make_backend('pmap', jax.local_devices()))
  return memory_fit.fitting_program(prog, config, config.batch_size)


def test_a_step_that_does_not_fit_ends_in_one_line_naming_what_fits_and_writes_nothing(
    tmp_path):
  workdir = tmp_path / 'run'
  code, output = in_process.command(
      'experiments.main', f'--config={CIFAR10}', f'--workdir={workdir}',
      *(f'--config.{k}={v}' for k, v in SMALL.items()),
      f'--config.device_memory_gib={TIGHT_GIB}')
  assert code == 1, output[-3000:]
  assert 'Traceback' not in output
  line = output.strip().splitlines()[-1]
  assert line.startswith('Error: batch_size=64 with model.backprop=autodiff needs '), line
  assert f'planned with (--config.device_memory_gib={TIGHT_GIB:g})' in line, line
  assert not workdir.exists()   # no config.json, metrics or events: nothing at all

  # What it names fits: the batch (compiled here at that batch) and reversible backprop.
  batch = int(re.search(r'--config\.batch_size=(\d+) ', line).group(1))
  assert 4 <= batch < 64 and batch % 4 == 0, line
  assert re.search(r'--config\.model\.backprop=reversible \(about [\d.]+ MiB at batch_size=64\)',
                   line), line
  config = small_config(batch_size=batch)
  prog = program.build_program(config, parallel.make_backend('pmap', jax.local_devices()))
  needed = memory_fit.need_of_program(prog, batch, fast=True)
  assert 4 * needed.bytes <= TIGHT_GIB * memory_fit.GIB


@pytest.mark.compile_heavy   # a step of .ci/run of its own (setup.cfg), not the README's command
def test_auto_picks_reversible_when_autodiff_does_not_fit_and_autodiff_when_it_does(
    caplog):
  caplog.set_level('INFO')
  prog, config = fitting(small_config(model__backprop='auto', device_memory_gib=TIGHT_GIB))
  assert config.model.backprop == 'reversible' == prog.train_net.arch.backprop
  assert re.search(r'model\.backprop=auto: reversible \(autodiff needs [\d.]+ MiB, '
                   r'reversible about [\d.]+ MiB, of the 20\.5 MiB planned with', caplog.text)

  caplog.clear()
  prog, config = fitting(small_config(model__backprop='auto', device_memory_gib=LOOSE_GIB))
  assert config.model.backprop == 'autodiff' == prog.train_net.arch.backprop
  assert 'model.backprop=auto: autodiff (autodiff needs' in caplog.text


def test_the_step_compiled_for_the_check_is_the_one_training_runs():
  """No second compile: after a step on a real state and batch (laid out as the loop lays
  them out), the tiny digits run's train step holds the one executable of the check."""
  config = lib.make_config()
  prog, _ = fitting(config)
  state = prog.backend.put_state(state_lib.create_state(prog.train_net, prog.tx, 0))
  source = input_pipeline.get_source(config.dataset, tuple(config.model.input_shape))
  batch = next(prog.backend.prefetch(source.train_batches(config.batch_size, 0, 1, 0, 0)))
  prog.train_step(state, batch)
  assert len(prog.train_step._compiled) == 1   # pylint: disable=protected-access


def test_device_memory_gib_overrides_what_the_host_reports():
  device = jax.local_devices()[0]
  host = memory_fit.available(small_config(), device)
  assert host.bytes == pytest.approx(memory_fit.PLAN_SHARE * memory_fit.host_available_bytes(),
                                     rel=0.05)
  assert host.what.startswith("90% of the host's available ")
  given = memory_fit.available(small_config(device_memory_gib=0.5), device)
  assert given == (memory_fit.GIB // 2, '--config.device_memory_gib=0.5')


@pytest.mark.parametrize('value', [0, -1.0, float('inf'), 'big'])
def test_a_device_memory_gib_that_cannot_work_is_refused(value):
  config = small_config()
  with config.ignore_type():
    config.device_memory_gib = value
  with pytest.raises(ValueError, match=r'device_memory_gib=.* must be a positive number'):
    train.check_config(config)


def test_a_resume_may_change_device_memory_gib_and_the_backprop_mode():
  """config.json records the mode a run trained with ('auto' resolved): a resume with
  'auto' or another memory figure is the same training."""
  old = small_config(model__backprop='reversible')
  new = small_config(model__backprop='auto', device_memory_gib=0.5)
  assert run_config.config_changes(old, new) == {}
  assert run_config.config_changes(old, small_config(batch_size=32)) == {
      'batch_size': (64, 32)}
