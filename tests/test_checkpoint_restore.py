"""What a failed checkpoint read leads to (irevnet_jax.run.checkpoint_restore): a transient
store error is retried and moves nothing, a persistent one ends the run in one line with
every checkpoint and metrics line in place, an unknown one moves nothing either, and on gs://
(a local fake-gcs-server) a corrupt checkpoint is moved aside, also when a move was killed
halfway, and the run resumes bit-identical."""
import json
import os

import numpy as np
import pytest

from irevnet_jax import train
from irevnet_jax.run import checkpoint_restore, checkpoints, checksums, metrics, paths
from irevnet_jax.run import store_errors
import in_process
import train_testlib as lib

# Orbax leaves an unraisable asyncio warning after a failed restore.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def _state(value):
  return {'step': np.asarray(value, np.int32),
          'params': {'w': np.arange(4096, dtype=np.float32) * value}}


def _save_steps(workdir, steps):
  checkpointer = checkpoints.Checkpointer(workdir, keep=3)
  for step in steps:
    checkpointer.save(step, _state(step))
  checkpointer.close()


def _failing_checksum_reads(monkeypatch, error, times):
  """The next `times` reads of a checkpoint's checksums raise `error` (the store dropping a
  connection, say); returns the list of the steps whose read failed."""
  failed = []
  read = checksums.Handler.restore

  def flaky(self, directory, args=None):
    if len(failed) < times:
      failed.append(int(directory.parent.name))
      raise error
    return read(self, directory, args)
  monkeypatch.setattr(checksums.Handler, 'restore', flaky)
  return failed


@pytest.fixture
def waits(monkeypatch):
  """The backoff pauses of `store_errors.retry`, recorded instead of slept."""
  recorded = []
  monkeypatch.setattr(store_errors, '_wait', recorded.append)
  return recorded


def _errors(caplog):
  return [r.getMessage() for r in caplog.records if r.levelname == 'ERROR']


def test_one_transient_error_is_retried_and_moves_nothing(tmp_path, monkeypatch, waits, caplog):
  _save_steps(str(tmp_path), [1, 2, 3])
  failed = _failing_checksum_reads(monkeypatch, ConnectionResetError(104, 'Connection reset'), 1)
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=3)
  with caplog.at_level('INFO'):
    restored, step = checkpointer.restore(target=_state(0))
  checkpointer.close()
  assert failed == [3] and len(waits) == 1    # one failed read of step 3, one pause
  assert step == 3
  lib.assert_trees_close(restored, _state(3), rtol=0, atol=0)
  assert checkpointer.all_steps() == [1, 2, 3]
  assert not os.path.exists(tmp_path / checkpoint_restore.CORRUPT_DIR)
  assert not _errors(caplog)


def test_an_unknown_read_error_is_one_line_and_moves_nothing(tmp_path, monkeypatch, waits):
  """A refused read (HTTP 403, a permission) is no evidence that the data is bad: the run
  stops naming the step and the error, and uses no older checkpoint."""
  _save_steps(str(tmp_path), [1, 2])
  _failing_checksum_reads(monkeypatch, PermissionError(13, 'Permission denied'), 10)
  checkpointer = checkpoints.Checkpointer(str(tmp_path), keep=3)
  with pytest.raises(checkpoint_restore.CheckpointUnreadable) as raised:
    checkpointer.restore(target=_state(0))
  checkpointer.close()
  message = str(raised.value)
  assert '\n' not in message and not waits
  assert message.startswith(f'Checkpoint 2 in {tmp_path}/checkpoints could not be read '
                            f'(PermissionError: [Errno 13] Permission denied)')
  assert checkpointer.all_steps() == [1, 2]
  assert not os.path.exists(tmp_path / checkpoint_restore.CORRUPT_DIR)


def test_a_transient_error_while_looking_for_the_checksums_skips_no_check(gcs, monkeypatch):
  """fsspec's is_dir() says False when the store fails: one dropped connection must not
  restore a checkpoint without verifying it."""
  workdir = f'{gcs}/run'
  _save_steps(workdir, [1, 2])
  fs = paths.filesystem(workdir)
  _flip_a_checksum(fs, f'{workdir}/checkpoints/2')
  info, failed = fs._info, []  # pylint: disable=protected-access

  async def flaky(path, **kwargs):
    if path.rstrip('/').endswith('/2/checksums') and not failed:
      failed.append(path)
      raise ConnectionResetError(104, 'Connection reset')
    return await info(path, **kwargs)
  monkeypatch.setattr(fs, '_info', flaky)
  paths.refresh(workdir)
  checkpointer = checkpoints.Checkpointer(workdir, keep=3)
  _, step = checkpointer.restore(target=_state(0), move_corrupt=False)
  checkpointer.close()
  assert failed and step == 1     # step 2 was checked, and failed its checksums


def _records(workdir):
  """metrics.jsonl without the timings."""
  return [{k: v for k, v in r.items() if k != 'steps_per_second'}
          for r in metrics.read_jsonl(workdir)]


def test_a_store_that_stays_unreachable_ends_the_run_in_one_line_keeping_everything(
    tmp_path, tiny_run, monkeypatch, waits):
  workdir = lib.copy_of_run(tiny_run, tmp_path)
  before = open(os.path.join(workdir, 'metrics.jsonl'), 'rb').read()
  failed = _failing_checksum_reads(monkeypatch, ConnectionResetError(104, 'Connection reset'),
                                   1000)
  code, output = in_process.command('experiments.main', *lib.flag_args(),
                                    f'--workdir={workdir}')
  assert code == 1, output[-3000:]
  errors = [line for line in output.splitlines() if 'Error' in line]
  assert errors == [
      f'Error: Reading checkpoint 24 in {workdir}/checkpoints failed 6 times in a row, the '
      f'store unreachable or busy (ConnectionResetError: [Errno 104] Connection reset); '
      f'nothing was changed: rerun the same command when the store answers again.'], output
  assert 'unusable' not in output and 'Resuming' not in output, output
  assert failed == [24] * 6 and len(waits) == 5 and waits == sorted(waits)   # backing off
  assert open(os.path.join(workdir, 'metrics.jsonl'), 'rb').read() == before
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['16', '24', '8']
  assert not os.path.exists(os.path.join(workdir, checkpoint_restore.CORRUPT_DIR))


def _flip_a_checksum(fs, step_dir):
  """Changes one bit of the first CRC in `step_dir`'s checksums (through the store)."""
  name = f'{step_dir}/{checkpoint_restore.CHECKSUM_ITEM}/{checksums.FILENAME}'
  sums = json.loads(fs.cat(name))
  first = sorted(sums)[0]
  sums[first] = f'{int(sums[first], 16) ^ 1:08x}'
  fs.pipe(name, json.dumps(sums).encode())
  return first


@pytest.mark.processes   # a corrupt checkpoint on the store: a step of .ci/run of its own
def test_a_corrupt_gs_checkpoint_is_moved_aside_and_the_run_ends_bit_identical(
    gcs, tiny_run, caplog):
  workdir = f'{gcs}/copy'
  fs = paths.filesystem(workdir)
  fs.put(str(tiny_run[0]), workdir, recursive=True)   # the finished tiny run, on gs://
  array = _flip_a_checksum(fs, f'{workdir}/checkpoints/24')
  with caplog.at_level('INFO'):
    result = train.train_and_evaluate(lib.make_config(), workdir)   # from 16, redoes 24
  moved = [os.path.basename(p) for p in fs.ls(f'{workdir}/{checkpoint_restore.CORRUPT_DIR}')]
  assert len(moved) == 1 and moved[0].startswith('24-'), moved
  assert _errors(caplog) == [
      f'Checkpoint 24 in {workdir}/checkpoints is unusable (1 array(s) fail their checksum, '
      f'e.g. {array}); using step 16 instead and moved it to '
      f'{workdir}/{checkpoint_restore.CORRUPT_DIR}/{moved[0]}.']
  assert 'Resuming from the checkpoint at step 16' in caplog.text
  lib.assert_trees_close(result.state, tiny_run[1].state, rtol=0, atol=0)
  assert _records(workdir) == _records(str(tiny_run[0]))
  assert checkpoints.Checkpointer(workdir, keep=3, read_only=True).all_steps() == [8, 16, 24]
  local = os.path.join(tiny_run[0], 'checkpoints', '24')
  stored = f'{workdir}/{checkpoint_restore.CORRUPT_DIR}/{moved[0]}'.split('://')[1]
  assert sorted(os.path.relpath(name, stored) for name in fs.find(stored)) == sorted(
      os.path.relpath(os.path.join(root, name), local)
      for root, _, names in os.walk(local) for name in names)   # every object of the step


class _Killed(BaseException):
  """Stands for the process dying at that point."""


@pytest.mark.processes   # a move killed halfway: a step of .ci/run of its own
def test_a_gs_move_killed_halfway_confuses_no_later_run(gcs, caplog):
  """Killed while copying: the rerun deletes the incomplete copy and moves the step again.
  Killed after the step was uncommitted: the rerun does not list it and deletes what is left."""
  workdir = f'{gcs}/run'
  fs = paths.filesystem(workdir)
  corrupt = f'{workdir}/{checkpoint_restore.CORRUPT_DIR}'
  _save_steps(workdir, [1, 2, 3])
  _flip_a_checksum(fs, f'{workdir}/checkpoints/3')
  objects = lambda root: sorted(os.path.relpath(name, root.split('://')[1])
                                for name in fs.find(root))
  step_3 = objects(f'{workdir}/checkpoints/3')
  copy = fs.copy

  def copy_half(sources, destinations, **kwargs):   # dies after copying half the objects
    if isinstance(sources, list):
      copy(sources[:len(sources) // 2], destinations[:len(destinations) // 2], **kwargs)
      raise _Killed()
    return copy(sources, destinations, **kwargs)
  with pytest.MonkeyPatch.context() as patch, pytest.raises(_Killed):
    patch.setattr(fs, 'copy', copy_half)
    checkpoints.Checkpointer(workdir, keep=3).restore(target=_state(0))
  incomplete = fs.ls(corrupt)
  assert len(incomplete) == 1 and 0 < len(fs.find(incomplete[0])) < len(step_3)
  assert checkpoints.Checkpointer(workdir, keep=3, read_only=True).all_steps() == [1, 2, 3]
  checkpointer = checkpoints.Checkpointer(workdir, keep=3)
  assert checkpointer.restore(target=_state(0))[1] == 2
  checkpointer.close()
  complete = fs.ls(corrupt)     # the incomplete copy deleted, a complete one made
  assert len(complete) == 1 and objects(f'gs://{complete[0]}') == step_3, (incomplete, complete)
  assert not fs.exists(f'{workdir}/checkpoints/3')

  # Step 2 corrupt too; the move dies once the step is uncommitted, before the rest goes.
  _flip_a_checksum(fs, f'{workdir}/checkpoints/2')
  delete = checkpoint_restore._delete  # pylint: disable=protected-access

  def delete_marker_only(filesystem, name):
    if not name.endswith(checkpoint_restore.COMMIT_MARKER):
      raise _Killed()
    delete(filesystem, name)
  with pytest.MonkeyPatch.context() as patch, pytest.raises(_Killed):
    patch.setattr(checkpoint_restore, '_delete', delete_marker_only)
    checkpoints.Checkpointer(workdir, keep=3).restore(target=_state(0))
  assert fs.find(f'{workdir}/checkpoints/2')        # objects left behind, uncommitted
  caplog.clear()
  with caplog.at_level('INFO'):
    checkpointer = checkpoints.Checkpointer(workdir, keep=3)
    restored, step = checkpointer.restore(target=_state(0))
    checkpointer.close()
  assert step == 1 and not _errors(caplog)      # nothing more to report
  lib.assert_trees_close(restored, _state(1), rtol=0, atol=0)
  assert not fs.find(f'{workdir}/checkpoints/2')      # cleaned up by Orbax
  assert len(fs.ls(corrupt)) == 2
