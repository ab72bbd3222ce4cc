"""Multi-process training on one machine: 2 processes x 2 CPU devices, jax.distributed with a
localhost coordinator and gloo collectives, against a 1-process run on 4 devices."""
import os

import pytest

from irevnet_jax.run import checkpoints, metrics

from irevnet_jax import train
import train_testlib as lib

# Several processes, kills and races: the second step of .ci/run (`-m processes`), off the
# README's test command for time.
pytestmark = pytest.mark.processes


@pytest.fixture
def single_process(tiny_run):
  """The reference: the tiny digits run (dropout on) in one process, on 4 devices, global
  batch 32 (conftest)."""
  return tiny_run[1].state


def _two_processes(workdir, script=None, extra=(), process_0_extra=(), timeout=300):
  """Runs both processes of a 2-process job to the end; returns [(returncode, output)].
  `process_0_extra`: flags for process 0 only."""
  processes = lib.start_processes(workdir, extra, (process_0_extra, ()), script)
  try:
    return [lib.finish(p, timeout) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()


def _assert_ok(results):
  for index, (code, output) in enumerate(results):
    assert code == 0, f'process {index} exited with {code}:\n{output[-4000:]}'


def test_two_processes_match_one_process(tmp_path, single_process):
  workdir = str(tmp_path)
  _assert_ok(_two_processes(workdir))
  _, variables, step = checkpoints.load_run(workdir)
  assert step == 24
  # Cross-device means add in an order fixed by device index (irevnet_jax.model.collectives), so
  # the runs agree to the last bit; with the backend's native all-reduce they drift apart.
  lib.assert_trees_close(variables['params'], single_process['params'], rtol=0, atol=0)
  lib.assert_trees_close(variables['batch_stats'], single_process['batch_stats'], rtol=0, atol=0)
  # Only process 0 writes metrics; each logged step once; eval saw every example once.
  records = metrics.read_jsonl(workdir)
  assert [r['step'] for r in records if 'train/loss' in r] == [8, 16, 24]
  assert records[-1]['eval/num_examples'] == 359
  assert len(os.listdir(os.path.join(workdir, 'tensorboard'))) == 1


def test_two_processes_interrupted_and_restarted_resume(tmp_path, single_process):
  workdir = str(tmp_path)
  steps = lambda: checkpoints.Checkpointer(workdir, keep=3).all_steps()
  # SIGKILL to both processes after the checkpoint at step 8.
  results = _two_processes(workdir, script=lib.HELPER,
                           extra=['--kill_at_step=12', '--wait_for_checkpoint=8'])
  assert all(code != 0 for code, _ in results), results
  assert max(steps()) == 8
  # Restarted, then SIGTERM to process 0 only (while it prefetches the batch of step 9), sent
  # to its supervisor (experiments/supervisor.py), which forwards it: JAX's preemption service
  # makes both save at the same step after the restored one, and exit with 143.
  results = _two_processes(workdir, script=lib.HELPER, process_0_extra=[
      '--kill_at_step=9', '--kill_signal=TERM', '--signal_supervisor'])
  assert [code for code, _ in results] == [143, 143], results
  for _, output in results:
    assert 'WARNING: Stopped by SIGTERM: saved a checkpoint at step' in output, output[-3000:]
  assert 8 < max(steps()) < 24
  # Restarted again: it ends where an uninterrupted run ends.
  _assert_ok(_two_processes(workdir))
  _, variables, step = checkpoints.load_run(workdir)
  assert step == 24
  lib.assert_trees_close(variables['params'], single_process['params'], rtol=0, atol=0)
  logged = [r['step'] for r in metrics.read_jsonl(workdir) if 'train/loss' in r]
  assert logged == [8, 16, 24]


def test_two_processes_match_one_process_at_another_batch_size(tmp_path):
  """Global batch 56 (14 per device), dropout on, 16 steps."""
  overrides = {'batch_size': 56, 'num_train_steps': 16, 'checkpoint_every_steps': 16}
  reference = train.train_and_evaluate(lib.make_config(**overrides), str(tmp_path / 'one'))
  workdir = str(tmp_path / 'two')
  _assert_ok(_two_processes(workdir, extra=[f'--config.{k}={v}' for k, v in overrides.items()]))
  _, variables, step = checkpoints.load_run(workdir)
  assert step == 16
  lib.assert_trees_close(variables['params'], reference.state['params'], rtol=0, atol=0)
