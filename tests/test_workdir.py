"""The run directory: refused runs leave nothing, a config.json changes only with a save,
a broken config.json is one line naming it, and a workdir on gs:// (a GCS emulator on
localhost) trains, refuses a second run, survives SIGKILL and ends bit-identical."""
import json
import logging
import os
import shutil
import time

import jax
import numpy as np
import pytest

from irevnet_jax.run import checkpoints, metrics, paths, run_config, workdir_lock

from irevnet_jax import train
from irevnet_jax.errors import UserError
import train_testlib as lib


def _copy_run(tiny_run, tmp_path):
  """A copy of the session's finished tiny run (step 24 of 24)."""
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_run[0], workdir)
  return str(workdir)


@pytest.mark.parametrize('existed', [False, True])
def test_a_refused_run_leaves_nothing_behind(tmp_path, existed):
  workdir = tmp_path / 'new'
  if existed:
    workdir.mkdir()
  with pytest.raises(ValueError, match='batch_size=30 is not divisible'):
    train.train_and_evaluate(lib.make_config(batch_size=30), str(workdir))
  assert os.listdir(workdir) == [] if existed else not workdir.exists()


def test_a_broken_config_json_is_one_line_naming_it(tiny_run, tmp_path):
  workdir = _copy_run(tiny_run, tmp_path)
  path = os.path.join(workdir, run_config.CONFIG_FILE)
  with open(path, 'w') as f:
    f.write('{"batch_size": 32, garbage')
  for call in (lambda: train.train_and_evaluate(lib.make_config(), workdir),
               lambda: checkpoints.load_run(workdir)):     # what experiments.evaluate reads
    with pytest.raises(ValueError) as error:
      call()
    message = str(error.value)
    assert path in message and 'delete it' in message and '\n' not in message


def test_a_refused_resume_writes_and_announces_nothing(tiny_run, tmp_path, caplog):
  workdir = _copy_run(tiny_run, tmp_path)
  before = open(os.path.join(workdir, run_config.CONFIG_FILE)).read()
  caplog.set_level(logging.INFO)
  with pytest.raises(ValueError, match='learning_rate: 0.2 -> 0.1'):
    train.train_and_evaluate(lib.make_config(learning_rate=0.1), workdir)
  assert 'Resuming' not in caplog.text
  assert open(os.path.join(workdir, run_config.CONFIG_FILE)).read() == before
  assert not os.path.exists(os.path.join(workdir, run_config.HISTORY_FILE))


def test_config_json_changes_only_with_a_save(tiny_run, tmp_path):
  """A changed run (allowed) that blows up before its first save leaves config.json and the
  history as they were, so going back to the old values needs no flag (a changed run that
  saves leaves one history entry: test_cli)."""
  workdir = _copy_run(tiny_run, tmp_path)
  config_path = os.path.join(workdir, run_config.CONFIG_FILE)
  before = open(config_path).read()
  blown = lib.make_config(num_train_steps=32, learning_rate=1e30)
  with pytest.raises(UserError, match='Non-finite'):
    train.train_and_evaluate(blown, workdir, allow_config_change=True)
  assert open(config_path).read() == before
  assert not os.path.exists(os.path.join(workdir, run_config.HISTORY_FILE))
  run_config.check_config_record(workdir, lib.make_config(), 24, allow_change=False)


def test_a_config_change_killed_between_its_two_writes_is_recorded_once(tmp_path, monkeypatch):
  """commit() writes the history, then config.json; a run killed (or stopped by the store)
  in between leaves the old config.json, so its rerun commits the same change again: the
  history must still hold it once."""
  workdir = str(tmp_path / 'run')
  run_config.write_config(workdir, lib.make_config())
  changed = lib.make_config(learning_rate=0.1)
  record = run_config.check_config_record(workdir, changed, 8, allow_change=True)

  def killed(*args):
    raise RuntimeError('killed after the history was written')
  monkeypatch.setattr(run_config, 'write_config', killed)
  with pytest.raises(RuntimeError, match='killed after'):
    record.commit()
  monkeypatch.undo()
  for _ in range(2):   # the rerun, and a later resume that changes nothing more
    run_config.check_config_record(workdir, changed, 8, allow_change=True).commit()
  history = [json.loads(line) for line in
             open(os.path.join(workdir, run_config.HISTORY_FILE)).read().splitlines()]
  assert [h['changes'] for h in history] == [{'learning_rate': [0.2, 0.1]}]
  assert run_config.read_config(workdir).learning_rate == 0.1


# --- gs:// ---------------------------------------------------------------------------------


def _two_processes(args):
  port = lib.free_port()
  processes = [lib.start(args + [f'--coordinator_address=localhost:{port}', '--num_processes=2',
                                 f'--process_id={index}'], num_devices=2) for index in range(2)]
  try:
    return [lib.finish(p, 300) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()


@pytest.mark.processes   # a second step of .ci/run
def test_a_gs_workdir_is_locked_survives_sigkill_and_ends_bit_identical(gcs, tiny_run, tmp_path):
  workdir = f'{gcs}/runs/tiny'
  go = tmp_path / 'go'
  args = lib.flag_args() + [f'--workdir={workdir}']
  # Killed (SIGKILL) at step 12 once checkpoint 8 is final and the test has tried a second run.
  first = lib.start(args + ['--kill_at_step=12', '--wait_for_checkpoint=8',
                            f'--wait_for_file={go}'], script=lib.HELPER)
  lease = paths.join(workdir, workdir_lock.LEASE_FILE)
  from etils import epath
  deadline = time.time() + 120
  while not epath.Path(lease).exists() and first.poll() is None and time.time() < deadline:
    time.sleep(0.1)
  code, output = lib.finish(lib.start(args))
  assert first.poll() is None, 'the first run ended before the second was tried'
  assert code != 0 and 'is in use by a run that is still alive' in output, output[-3000:]
  go.touch()
  code, output = lib.finish(first)
  assert code == -9, output[-3000:]
  paths.refresh(workdir)
  assert checkpoints.Checkpointer(workdir, keep=3, read_only=True).all_steps() == [8]
  # Rerun by 2 processes sharing the workdir once the killed run's lease has expired: both
  # restore step 8 (the loop checks that they agree), only process 0 writes.
  lib.wait_for_lease_to_expire()
  results = _two_processes(args)
  for index, (code, output) in enumerate(results):
    assert code == 0, f'process {index}:\n{output[-3000:]}'
  assert 'Resuming from the checkpoint at step 8' in results[0][1]
  assert 'Resuming' not in results[1][1]
  paths.refresh(workdir)
  _, variables, step = checkpoints.load_run(workdir)
  assert step == 24
  reference = tiny_run[1].state
  for name in ('params', 'batch_stats'):
    for got, want in zip(*(map(np.asarray, jax.tree_util.tree_leaves(t))
                           for t in (variables[name], reference[name]))):
      np.testing.assert_array_equal(got, want)
  records = metrics.read_jsonl(workdir)
  assert [r['step'] for r in records if 'train/loss' in r] == [8, 16, 24]
  assert len(list(epath.Path(workdir, 'tensorboard').iterdir())) == 2   # one per run
  assert not epath.Path(lease).exists()     # released at the end


def test_the_gs_lease_is_refused_while_fresh_and_taken_when_stale(gcs):
  from etils import epath
  workdir = f'{gcs}/runs/leased'
  first = workdir_lock.WorkdirLock(workdir)
  with pytest.raises(BlockingIOError, match='still alive .*lease renewed'):
    workdir_lock.WorkdirLock(workdir)
  first.release()
  assert not epath.Path(first.path).exists()
  # A killed run's record (its own lease: 1 s), stale once the store's clock is 1 s past
  # its last write (the store's Date has whole seconds: up to 2 s); the client's clock and
  # the record's text are not read.
  killed = {'owner': 'pid 1 on lost-vm', 'renewed': time.time() - 1000, 'lease_seconds': 1}
  epath.Path(first.path).write_text(json.dumps(killed))
  with pytest.raises(BlockingIOError, match='lost-vm; lease renewed 0 s ago, it lasts 1 s'):
    workdir_lock.WorkdirLock(workdir)
  time.sleep(2.1)
  second = workdir_lock.WorkdirLock(workdir)
  assert 'lost-vm' not in epath.Path(second.path).read_text()
  second.release()
