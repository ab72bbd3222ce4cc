"""Tests of irevnet_jax.run.checkpoints: round trip, pruning, fall-back, partial saves, load_run."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from irevnet_jax.errors import UserError
from irevnet_jax.run import checkpoints, checksums, run_config
import train_testlib as lib


def _state(value):
  return {'step': np.asarray(value, np.int32),
          'params': {'dense': {'kernel': np.full((3, 2), value, np.float32)}},
          'batch_stats': {'bn': {'mean': np.full((2,), -value, np.float32)}},
          'opt_state': ({'trace': {'dense': {'kernel': np.zeros((3, 2), np.float32)}}}, ()),
          'rng': np.asarray([0, value], np.uint32)}


def _save_steps(workdir, steps, keep=3):
  checkpointer = checkpoints.Checkpointer(workdir, keep=keep)
  for step in steps:
    checkpointer.save(step, _state(step))
  checkpointer.close()


def test_round_trip_and_pruning(tmp_path):
  _save_steps(str(tmp_path), [1, 2, 3, 4], keep=2)
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=2)
  assert checkpointer.all_steps() == [3, 4]
  restored, step = checkpointer.restore(target=_state(0))
  checkpointer.close()
  assert step == 4
  lib.assert_trees_close(restored, _state(4), rtol=0, atol=0)
  assert restored['rng'].dtype == np.uint32 and restored['step'].dtype == np.int32


def test_no_checkpoint_gives_none(tmp_path):
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=2)
  assert checkpointer.restore(target=_state(0)) == (None, None)
  checkpointer.close()


def test_bookkeeping_is_committed_with_its_checkpoint(tmp_path):
  """`restore` gives the bookkeeping saved with the checkpoint it restores: the newest, or
  the one it fell back to; a checkpoint of an older version without any gives {}."""
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=3)
  for step in (1, 2, 3):
    checkpointer.save(step, _state(step), bookkeeping={'rows': [[step, {'loss': step / 3}]]})
  checkpointer.close()
  assert os.path.isdir(tmp_path / 'checkpoints' / '3' / 'bookkeeping')
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=3)
  _, step = checkpointer.restore(target=_state(0))
  assert step == 3 and checkpointer.bookkeeping == {'rows': [[3, {'loss': 1.0}]]}
  os.remove(tmp_path / 'checkpoints' / '3' / 'checksums' / 'metadata')   # 3 is unusable
  _, step = checkpointer.restore(target=_state(0), move_corrupt=False)
  assert step == 2 and checkpointer.bookkeeping == {'rows': [[2, {'loss': 2 / 3}]]}
  checkpointer.close()
  for step in (1, 2):    # as saved before checkpoints had bookkeeping
    shutil.rmtree(tmp_path / 'checkpoints' / str(step) / 'bookkeeping')
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=3)
  restored, step = checkpointer.restore(target=_state(0), move_corrupt=False)
  checkpointer.close()
  assert step == 2 and checkpointer.bookkeeping == {}
  lib.assert_trees_close(restored, _state(2), rtol=0, atol=0)


# Orbax leaves an unraisable asyncio warning after a failed restore.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_corrupt_or_partial_latest_falls_back_to_previous(tmp_path):
  workdir = str(tmp_path)
  _save_steps(workdir, [1, 2, 3])
  # Step 3: its array data is lost (a partial copy, a bad disk).
  for root, _, files in os.walk(tmp_path / 'checkpoints' / '3'):
    for name in files:
      if os.path.basename(root) == 'd':
        os.remove(os.path.join(root, name))
  # An unfinished save of step 4 (the process was killed while writing).
  os.makedirs(tmp_path / 'checkpoints' / '4.orbax-checkpoint-tmp' / 'default')
  checkpointer = checkpoints.Checkpointer(workdir, keep=3)
  restored, step = checkpointer.restore(target=_state(0))
  assert step == 2
  lib.assert_trees_close(restored, _state(2), rtol=0, atol=0)
  assert checkpointer.all_steps() == [1, 2]
  assert len(os.listdir(tmp_path / 'corrupt_checkpoints')) == 1
  checkpointer.save(3, _state(30))   # the step can be written again
  checkpointer.close()
  assert not os.path.exists(tmp_path / 'checkpoints' / '4.orbax-checkpoint-tmp')  # cleaned up


def test_load_run(tmp_path):
  workdir = str(tmp_path)
  config = lib.make_config()
  run_config.write_config(workdir, config)
  _save_steps(workdir, [5, 10])
  loaded, variables, step = checkpoints.load_run(workdir)
  assert step == 10 and loaded.model.blocks == (1, 1, 1) and loaded.model.input_shape == (8, 8, 1)
  assert loaded.to_dict() == config.to_dict()
  assert set(variables) == {'params', 'batch_stats'}
  np.testing.assert_array_equal(variables['params']['dense']['kernel'], np.full((3, 2), 10.0))
  _, variables, step = checkpoints.load_run(workdir, step=5)
  assert step == 5 and variables['batch_stats']['bn']['mean'][0] == -5.0
  with pytest.raises(ValueError, match='available steps'):
    checkpoints.load_run(workdir, step=7)
  with pytest.raises(UserError, match='config.json'):
    checkpoints.load_run(str(tmp_path / 'nothing'))


# Another process saves `_state(step)` as checkpoint `step` in the workdir argv[1].
_SAVE_IN_ANOTHER_PROCESS = """
import sys
import numpy as np
from irevnet_jax.run import checkpoints
step = int(sys.argv[2])
state = {'params': {'dense': {'kernel': np.full((3, 2), step, np.float32)}},
         'batch_stats': {'bn': {'mean': np.full((2,), -step, np.float32)}}}
checkpointer = checkpoints.Checkpointer(sys.argv[1], keep=3)
checkpointer.save(step, state)
checkpointer.close()
"""


@pytest.mark.processes   # a writer process beside the reader: a step of .ci/run of its own
def test_readers_of_a_live_gs_run_see_its_newest_checkpoint(gcs):
  """gcsfs keeps each process's listings and Orbax its list of steps: a reader that has
  listed a run still sees the checkpoints a training process commits later."""
  workdir = f'{gcs}/live'
  run_config.write_config(workdir, lib.make_config())
  _save_steps(workdir, [1])
  reader = checkpoints.Checkpointer(workdir, keep=3, read_only=True)
  assert reader.all_steps() == [1]
  assert checkpoints.load_run(workdir)[2] == 1
  writer = subprocess.run([sys.executable, '-c', _SAVE_IN_ANOTHER_PROCESS, workdir, '2'],
                          cwd=lib.REPO, env=lib.env_with_devices(1), timeout=120,
                          capture_output=True, text=True)
  assert writer.returncode == 0, writer.stderr[-3000:]
  assert reader.all_steps() == [1, 2]
  _, step = reader.restore(move_corrupt=False)
  reader.close()
  assert step == 2
  _, variables, step = checkpoints.load_run(workdir)
  assert step == 2 and variables['params']['dense']['kernel'][0, 0] == 2.0


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_mismatched_target_is_an_error_not_corruption(tmp_path):
  _save_steps(str(tmp_path), [1, 2])
  other_model = _state(0)
  other_model['params']['dense']['kernel'] = np.zeros((5, 2), np.float32)
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=3)
  with pytest.raises(ValueError, match='use a new --workdir'):
    checkpointer.restore(target=other_model)
  assert checkpointer.all_steps() == [1, 2]
  checkpointer.close()
  assert not os.path.exists(tmp_path / 'corrupt_checkpoints')


def _errors(caplog):
  return [r.getMessage() for r in caplog.records if r.levelname == 'ERROR']


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_fallback_is_reported_in_one_line(tmp_path, caplog):
  """A flipped byte in step 3's data: one error line names the checkpoint, why, the step used
  and where the unusable one went."""
  big = lambda value: {'params': {'w': np.arange(4096, dtype=np.float32) * value}}
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=3)
  for step in (1, 2, 3):   # 16 KB arrays: stored apart from OCDBT's (checksummed) tree nodes
    checkpointer.save(step, big(step))
  checkpointer.close()
  files = [os.path.join(root, name) for root, _, names in os.walk(tmp_path / 'checkpoints' / '3')
           for name in names if os.path.basename(root) == 'd']
  largest = max(files, key=os.path.getsize)
  data = bytearray(open(largest, 'rb').read())
  data[len(data) // 2] ^= 0x01
  open(largest, 'wb').write(bytes(data))
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=3)
  with caplog.at_level('INFO'):
    restored, step = checkpointer.restore(target=big(0))
  checkpointer.close()
  assert step == 2
  lib.assert_trees_close(restored, big(2), rtol=0, atol=0)
  moved = os.listdir(tmp_path / 'corrupt_checkpoints')
  assert _errors(caplog) == [
      f'Checkpoint 3 in {tmp_path}/checkpoints is unusable (1 array(s) fail their checksum, '
      f'e.g. params/w); using step 2 instead and moved it to '
      f'{tmp_path}/corrupt_checkpoints/{moved[0]}.']


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_deleted_tree_metadata_file_is_named(tmp_path, caplog):
  _save_steps(str(tmp_path), [1, 2])
  os.remove(tmp_path / 'checkpoints' / '2' / 'default' / '_METADATA')
  with caplog.at_level('INFO'):
    _, step = checkpoints.Checkpointer(str(tmp_path), keep=3).restore(
        target=_state(0), move_corrupt=False)
  assert step == 1
  assert _errors(caplog) == [
      f'Checkpoint 2 in {tmp_path}/checkpoints is unusable (its tree metadata '
      f'default/_METADATA is missing); using step 1 instead.']


def test_non_finite_values_make_a_checkpoint_unusable(tmp_path):
  bad = _state(2)
  bad['opt_state'][0]['trace']['dense']['kernel'][1, 1] = np.nan
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=3)
  checkpointer.save(1, _state(1))
  checkpointer.save(2, bad)
  checkpointer.close()
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=3)
  _, step = checkpointer.restore(target=_state(0), move_corrupt=False)
  checkpointer.close()
  assert step == 1


def test_checksums_are_computed_in_the_commit_thread(tmp_path, monkeypatch):
  """An asynchronous save neither copies nor checksums the arrays on the calling thread, and
  the checkpoint on disk carries the checksums of what was saved."""
  import threading
  threads = []
  crc = checksums.checksums

  def recording(state):
    threads.append(threading.current_thread())
    return crc(state)
  monkeypatch.setattr(checksums, 'checksums', recording)
  state = _state(5)
  state['step'] = np.int32(5)   # a numpy scalar, as the pmap back end's to_host gives
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=3)
  checkpointer.save(5, state)
  checkpointer.close()
  assert threads and threading.main_thread() not in threads
  stored = json.load(open(tmp_path / 'checkpoints' / '5' / 'checksums' / 'metadata'))
  assert stored == crc(_state(5))
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=3)
  raw, step = checkpointer.restore(move_corrupt=False)   # no target: what load_run reads
  checkpointer.close()
  assert step == 5 and raw['step'] == 5


def test_load_run_logs_no_orbax_notes(tmp_path, caplog):
  run_config.write_config(str(tmp_path), lib.make_config())
  _save_steps(str(tmp_path), [5])
  with caplog.at_level('INFO'):
    _, _, step = checkpoints.load_run(str(tmp_path))
  assert step == 5
  notes = [r.getMessage() for r in caplog.records if r.levelno >= 30]
  assert not notes, notes
