"""Tests of the training runner (irevnet_jax.train, experiments.main) on tiny digits runs."""
import json
import math
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from irevnet_jax.run import checkpoints, metrics, paths

from irevnet_jax import train
from irevnet_jax.errors import UserError
from irevnet_jax.train import config as config_lib, evaluate_run, optimizer, parallel
from experiments.configs import digits
import in_process
import tensorboard_events
import train_testlib as lib

CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(lib.REPO, 'experiments', 'configs'))
                 if f.endswith('.py') and f not in ('__init__.py', 'common.py'))


@pytest.mark.parametrize('name', CONFIGS)
def test_every_experiment_config_passes_the_checks(name):
  import importlib
  config = importlib.import_module(f'experiments.configs.{name}').get_config()
  train.check_config(config)


@pytest.mark.parametrize('override, message', [
    ({'batchsize': 16}, 'Unknown config field'),
    ({'batch_size': 18}, 'batch_size=18 is not divisible by the 4 devices'),
    ({'eval_batch_size': 10}, 'eval_batch_size=10'),
    ({'num_devices': 9}, 'num_devices=9'),
    ({'lr_schedule': 'linear'}, 'lr_schedule'),
    ({'dataset__name': 'mnistx'}, "Unknown dataset.name='mnistx'"),
    ({'model__input_shape': (16, 16, 1)}, 'model.input_shape=(16, 16, 1)'),
    ({'model__blokcs': (1, 1)}, 'blokcs'),
])
def test_config_errors(tmp_path, override, message):
  config = lib.make_config()
  for key, value in override.items():
    node, leaf = (config.model, key[7:]) if key.startswith('model__') else (
        (config.dataset, key[9:]) if key.startswith('dataset__') else (config, key))
    with node.unlocked():
      node[leaf] = value
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    train.train_and_evaluate(config, str(tmp_path))


def test_learning_rate_schedules():
  config = lib.make_config(learning_rate=0.4, warmup_epochs=1.0, lr_schedule='step',
                           lr_boundaries=(2, 3), lr_decay_factor=0.1)
  schedule = optimizer.learning_rate_schedule(config, total_steps=40, steps_per_epoch=10)
  rates = np.array([float(schedule(s)) for s in range(40)])
  np.testing.assert_allclose(rates[:10], 0.4 * np.arange(1, 11) / 10, rtol=1e-6)
  np.testing.assert_allclose(rates[[10, 19, 20, 29, 30, 39]],
                             [0.4, 0.4, 0.04, 0.04, 0.004, 0.004], rtol=1e-5)
  config.lr_schedule = 'cosine'
  schedule = optimizer.learning_rate_schedule(config, total_steps=40, steps_per_epoch=10)
  assert float(schedule(10)) == pytest.approx(0.4)
  assert float(schedule(25)) == pytest.approx(0.2, rel=1e-5)
  assert float(schedule(40)) == pytest.approx(0.0, abs=1e-7)


@pytest.fixture
def uninterrupted(tiny_run):
  """The reference: the tiny run from step 0 to 24 in one go, on 4 devices (conftest)."""
  return tiny_run


def test_loss_falls_and_outputs_are_written(uninterrupted):
  workdir, result = uninterrupted
  records = metrics.read_jsonl(str(workdir))
  losses = [r['train/loss'] for r in records if 'train/loss' in r]
  assert len(losses) == 3 and losses[-1] < losses[0], losses
  assert losses[-1] < 0.6 * math.log(10), losses     # ln(10): the loss of a guess
  last = records[-1]
  assert last['step'] == 24 and last['eval/num_examples'] == 359
  assert last['eval/accuracy'] > 0.25   # chance: 0.1
  assert last['eval/inversion_rel_error'] < 1e-5
  assert result.eval_metrics == {k: v for k, v in last.items() if k != 'step'}
  assert {'train/accuracy', 'train/learning_rate', 'steps_per_second'} <= set(records[0])
  assert os.listdir(workdir / 'tensorboard')
  assert json.load(open(workdir / 'config.json'))['num_train_steps'] == 24
  # load_run returns the final variables.
  config, variables, step = checkpoints.load_run(str(workdir))
  assert step == 24 and config.model.blocks == (1, 1, 1)
  lib.assert_trees_close(variables['params'], result.state['params'], rtol=0, atol=0)
  lib.assert_trees_close(variables['batch_stats'], result.state['batch_stats'], rtol=0, atol=0)


def test_four_devices_match_one_device(tmp_path):
  finals = []
  for n in (1, 4):   # without dropout: its masks are drawn per device
    config = lib.make_config(num_devices=n, num_train_steps=6, model__dropout_rate=0.0,
                             checkpoint_every_steps=0)
    finals.append(train.train_and_evaluate(config, str(tmp_path / f'd{n}')))
  lib.assert_trees_close(finals[0].state['params'], finals[1].state['params'],
                         rtol=1e-4, atol=1e-5)
  lib.assert_trees_close(finals[0].state['batch_stats'], finals[1].state['batch_stats'],
                         rtol=1e-4, atol=1e-5)
  assert finals[0].eval_metrics['eval/loss'] == pytest.approx(
      finals[1].eval_metrics['eval/loss'], rel=1e-4)


def test_non_finite_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
  config = lib.make_config(learning_rate=1e9, warmup_epochs=0.0, lr_schedule='step',
                           num_train_steps=40, log_every_steps=1, checkpoint_every_steps=1)
  with pytest.raises(UserError, match=r'Non-finite .* at step (\d+)') as e:
    train.train_and_evaluate(config, str(tmp_path))
  bad_step = int(e.value.args[0].split('at step ')[1].split(';')[0])
  steps = checkpoints.Checkpointer(str(tmp_path), keep=3).all_steps()
  assert steps and max(steps) == bad_step - 1
  _, variables, step = checkpoints.load_run(str(tmp_path))
  assert step == bad_step - 1
  assert all(np.isfinite(a).all() for a in jax.tree_util.tree_leaves(variables))


@pytest.mark.processes   # kills a running process: a step of .ci/run of its own
@pytest.mark.parametrize('signal_name', ['KILL', 'TERM'])
def test_interrupted_run_resumes_exactly(tmp_path, uninterrupted, signal_name):
  reference = uninterrupted[1].state
  workdir = str(tmp_path)
  args = lib.flag_args() + [f'--workdir={workdir}', '--kill_at_step=12',
                            '--wait_for_checkpoint=8', f'--kill_signal={signal_name}']
  code, output = lib.finish(lib.start(args, script=lib.HELPER))
  steps = checkpoints.Checkpointer(workdir, keep=3).all_steps()
  if signal_name == 'KILL':
    assert code == -signal.SIGKILL, output[-3000:]
    assert max(steps) == 8, steps
  else:   # SIGTERM: saves after the step in flight, exits with 128 + 15. Batches are
    # prefetched PREFETCH ahead: batch 12 is read while step 12 - PREFETCH + 2 is dispatched.
    assert code == 143, output[-3000:]
    assert max(steps) == 12 - parallel.PREFETCH + 2, steps
  # Rerunning the same command resumes and ends where the uninterrupted run ends
  # (same data order, same dropout masks).
  result = train.train_and_evaluate(lib.make_config(), workdir)
  assert result.step == 24
  lib.assert_trees_close(result.state, reference)
  # Each logged step appears once in metrics.jsonl.
  logged = [r['step'] for r in metrics.read_jsonl(workdir) if 'train/loss' in r]
  assert logged == [8, 16, 24]


# Logs every 10 steps, checkpoints every 8: neither interval divides the other.
NOT_DIVIDING = {'log_every_steps': 10}


@pytest.fixture(scope='module')
def not_dividing_run(tmp_path_factory):
  """The workdir of the tiny run with NOT_DIVIDING, from step 0 to 24 in one go."""
  workdir = str(tmp_path_factory.mktemp('not_dividing'))
  train.train_and_evaluate(lib.make_config(**NOT_DIVIDING), workdir)
  return workdir


def _records(workdir):
  """metrics.jsonl and the TensorBoard points, without the steps/s (wall-time rates)."""
  paths.refresh(workdir)
  lines = [{k: v for k, v in r.items() if k != 'steps_per_second'}
           for r in metrics.read_jsonl(workdir)]
  points = tensorboard_events.scalars(paths.join(workdir, 'tensorboard'),
                                      skip=('steps_per_second',))
  return lines, points


@pytest.mark.processes   # a second step of .ci/run
@pytest.mark.parametrize('store', ['local', 'gs'])
def test_a_run_killed_during_a_save_records_what_an_uninterrupted_run_records(
    tmp_path, request, not_dividing_run, store):
  """Killed while checkpoint 16 is being committed, after it logged steps 20 and 24, a run
  resumes from 8 with the train metrics of steps 1-8 (committed with checkpoint 8) and ends
  with the uninterrupted run's records, in metrics.jsonl and in TensorBoard."""
  workdir = str(tmp_path) if store == 'local' else request.getfixturevalue('gcs') + '/runs/k'
  args = lib.flag_args(**NOT_DIVIDING) + [f'--workdir={workdir}', '--kill_during_save=16']
  code, output = lib.finish(lib.start(args, script=lib.HELPER))
  assert code == -signal.SIGKILL, output[-3000:]
  paths.refresh(workdir)
  assert checkpoints.Checkpointer(workdir, keep=3, read_only=True).all_steps() == [8]
  lines, points = _records(workdir)
  assert [r['step'] for r in lines if 'train/loss' in r] == [10, 20, 24]
  assert [s for s, _ in points['train/loss']] == [10, 20, 24]
  if store == 'gs':
    lib.wait_for_lease_to_expire()   # the killed run's lease
  train.train_and_evaluate(lib.make_config(**NOT_DIVIDING), workdir)
  lines, points = _records(workdir)
  want_lines, want_points = _records(not_dividing_run)
  assert [r['step'] for r in want_lines] == [10, 20, 24, 24]   # train/*, then eval/* at 24
  assert lines == want_lines     # exactly: the step-10 record averages steps 1-10 again
  assert points == want_points   # each step once, the same values
  assert set(points) >= {'train/loss', 'train/accuracy', 'train/learning_rate', 'eval/loss'}


# Orbax leaves an unraisable asyncio warning after a failed restore.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_corrupt_latest_checkpoint_falls_back(tmp_path, uninterrupted):
  reference = uninterrupted[1].state
  workdir = lib.copy_of_run(uninterrupted, tmp_path)      # a finished run of make_config()
  for root, _, files in os.walk(os.path.join(workdir, 'checkpoints', '24')):
    for name in files:
      if name.endswith('.ocdbt') or os.path.basename(root) == 'd':
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'garbage')
  _, _, step = checkpoints.load_run(workdir)      # reported and skipped
  assert step == 16
  result = train.train_and_evaluate(lib.make_config(), workdir)   # falls back, moves 24 aside
  assert os.listdir(os.path.join(workdir, 'corrupt_checkpoints'))
  assert result.step == 24
  lib.assert_trees_close(result.state, reference)


def test_imagenet_config_runs_on_synthetic_data(tmp_path):
  """The ImageNet config (b), shrunk, trains a few steps on synthetic data on 2 devices: no
  TFDS needed. `python -m experiments.main`, run in this process."""
  config = os.path.join(lib.REPO, 'experiments', 'configs', 'bijective.py')
  args = [f'--config={config}', f'--workdir={tmp_path}', '--config.dataset.name=synthetic',
          "--config.model.input_shape=(32,32,3)", '--config.model.blocks=(1,1,1,1)',
          '--config.batch_size=8', '--config.eval_batch_size=256', '--config.num_train_steps=2',
          '--config.log_every_steps=1', '--config.eval_every_steps=0',
          '--config.checkpoint_every_steps=0', '--config.num_devices=2']
  code, output = in_process.command('experiments.main', *args)
  assert code == 0, output[-3000:]
  records = metrics.read_jsonl(str(tmp_path))
  assert [r['step'] for r in records if 'train/loss' in r] == [1, 2]
  assert all(math.isfinite(r['train/loss']) for r in records if 'train/loss' in r)
  assert records[-1]['eval/inversion_rel_error'] < 1e-5


@pytest.mark.parametrize('nesterov', [False, True])
def test_momentum_restarts_at_each_epoch_start(nesterov):
  """restart_momentum_each_epoch: the update at each epoch's first step is a fresh SGD's
  first update from the same parameters and gradients (the trace zeroed, the rate's count
  kept); every other update is plain SGD's; the state tree is plain SGD's (checkpoints
  restore either way)."""
  config = lib.make_config(momentum=0.9, nesterov=nesterov, weight_decay=1e-3,
                           warmup_epochs=1.0, lr_boundaries=(2.0,), lr_decay_factor=0.5,
                           restart_momentum_each_epoch=True)
  starts = optimizer.epoch_starts(total_steps=8, steps_per_epoch=2.4)
  assert starts == (2, 5, 7)     # round(2.4 e)
  # warm-up over steps 0-1, halved from step 5 on: the count must survive the restarts
  schedule, restarting = optimizer.schedule_and_optimizer(config, 8, steps_per_epoch=2.4)
  plain = optimizer.make_optimizer(config, schedule)
  keys = iter(jax.random.split(jax.random.PRNGKey(0), 20))
  params = {'w': jax.random.normal(next(keys), (3, 4)), 'b': jax.random.normal(next(keys), (4,))}
  state = restarting.init(params)
  assert (jax.tree_util.tree_structure(state) ==
          jax.tree_util.tree_structure(plain.init(params)))
  update, plain_update = jax.jit(restarting.update), jax.jit(plain.update)
  for step in range(8):
    grads = jax.tree_util.tree_map(lambda p: jax.random.normal(next(keys), p.shape), params)
    if step in starts:   # what a new SGD, created for this epoch, does
      reference = optax.tree_utils.tree_set(plain.init(params), count=jnp.int32(step))
    else:
      reference = state
    expected, expected_state = plain_update(grads, reference, params)
    updates, state = update(grads, state, params)
    lib.assert_trees_close(updates, expected, rtol=0, atol=0)
    lib.assert_trees_close(state, expected_state, rtol=0, atol=0)
    params = optax.apply_updates(params, updates)


def test_momentum_restarts_resume_exactly_across_an_epoch_start(tmp_path):
  """restart_momentum_each_epoch: a run resumed at step 4 restarts at step 6 as the
  uninterrupted run does (2.8 steps an epoch: restarts at 3 and 6) and ends equal to it."""
  config = lib.make_config(batch_size=512, num_train_steps=8, checkpoint_every_steps=4,
                           log_every_steps=4, eval_inversion_examples=0,
                           restart_momentum_each_epoch=True)
  whole = train.train_and_evaluate(config, str(tmp_path / 'whole'))
  shutil.copytree(tmp_path / 'whole', tmp_path / 'resumed')
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / '8')
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert resumed.step == 8
  lib.assert_trees_close(resumed.state, whole.state, rtol=0, atol=0)


def test_an_older_runs_config_without_the_fields_added_since_still_evaluates():
  """A config.json written before `restart_momentum_each_epoch` existed is checked as the
  run trained (the field False); a field that was always there, missing, is still refused."""
  old = digits.get_config().to_dict()
  for field in config_lib.ADDED_FIELDS:
    del old[field]
  config = evaluate_run.with_overrides(ml_collections.ConfigDict(old))
  assert config.restart_momentum_each_epoch is False
  del old['seed']
  with pytest.raises(ValueError, match="missing field.*'seed'"):
    evaluate_run.with_overrides(ml_collections.ConfigDict(old))
