"""Tests of irevnet_jax.checkpoints: round trip, pruning, fall-back, partial saves, load_run."""
import os

import numpy as np
import pytest

from irevnet_jax import checkpoints, workdir as workdir_lib
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
  workdir_lib.write_config(workdir, config)
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
  with pytest.raises(FileNotFoundError, match='config.json'):
    checkpoints.load_run(str(tmp_path / 'nothing'))


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
