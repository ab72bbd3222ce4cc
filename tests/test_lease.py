"""One live owner of a gs:// workdir (run/workdir_lock.py), on the GCS emulator: launches at
the same moment, a holder cut off from the store, a launcher's clock ahead, a shorter lease
on a later launch. Leases last seconds (the `gcs` fixture: IREVNET_LEASE_SECONDS=3)."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from irevnet_jax.run import checkpoints, gcs_objects, paths, workdir_lock

import train_testlib as lib

# Several processes, kills and races: the second step of .ci/run (`-m processes`), off the
# README's test command for time.
pytestmark = pytest.mark.processes

LEASE_HELPER = os.path.join(lib.REPO, 'tests', 'lease_helper.py')


def _take_when_free(workdir, timeout=20):
  """A WorkdirLock of `workdir`, retried while the workdir is refused as in use."""
  deadline = time.monotonic() + timeout
  while True:
    try:
      return workdir_lock.WorkdirLock(workdir)
    except BlockingIOError:
      if time.monotonic() > deadline:
        raise
      time.sleep(0.1)


def _record(lock):
  found, _ = gcs_objects.read(lock.path)
  return found, (json.loads(found.data) if found else None)


def _objects(workdir):
  """{name: generation} of every object of the run but its lease record."""
  fs = paths.filesystem(workdir)
  fs.invalidate_cache()
  return {name: info.get('generation') for name, info in fs.find(workdir, detail=True).items()
          if not name.endswith(workdir_lock.LEASE_FILE)}


def test_four_launches_at_the_same_moment_give_one_owner_ten_times(gcs):
  workdir = f'{gcs}/runs/contended'
  launchers = [subprocess.Popen([sys.executable, LEASE_HELPER, 'contend', workdir],
                                env=lib.env_with_devices(1), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
               for _ in range(4)]
  try:
    for launcher in launchers:
      assert launcher.stdout.readline().strip() == 'ready'
    owners, lost_at_write = [], 0
    for _ in range(10):
      for launcher in launchers:      # all four wait on this line, then race
        launcher.stdin.write('go\n')
        launcher.stdin.flush()
      answers = [launcher.stdout.readline().strip() for launcher in launchers]
      winners = [a for a in answers if a.startswith('won ')]
      assert len(winners) == 1, answers
      pid = winners[0].split()[1]
      owners.append(pid)
      for answer in answers:
        if answer.startswith('refused '):
          lost_at_write += int(answer.split()[1]) > 0
          assert 'is in use by a run that is still alive (pid ' + pid in answer, answer
      for launcher in launchers:
        launcher.stdin.write('release\n')
        launcher.stdin.flush()
      assert [launcher.stdout.readline().strip() for launcher in launchers] == ['released'] * 4
    print(f'40 launches, 10 rounds: one owner each ({len(set(owners))} distinct processes won); '
          f'{lost_at_write} refusals came from a conditional write that lost the race')
  finally:
    for launcher in launchers:
      launcher.kill()
      launcher.wait()


def test_four_training_launches_at_once_one_trains(gcs):
  workdir = f'{gcs}/runs/four'
  args = lib.flag_args(num_train_steps=8) + [f'--workdir={workdir}']
  processes = [lib.start(args) for _ in range(4)]
  try:
    results = [lib.finish(p, 180) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  trained = [output for code, output in results if code == 0]
  refused = [output for code, output in results if code != 0]
  assert len(trained) == 1 and len(refused) == 3, [r[1][-2000:] for r in results]
  for output in refused:
    errors = [line for line in output.splitlines() if line.startswith('Error:')]
    assert len(errors) == 1 and 'is in use by a run that is still alive' in errors[0], output
    assert 'Traceback' not in output, output
  paths.refresh(workdir)
  assert checkpoints.Checkpointer(workdir, keep=3, read_only=True).all_steps() == [8]


def test_a_holder_whose_renewals_fail_loses_the_lease(gcs, monkeypatch):
  workdir = f'{gcs}/runs/cut_off'
  holder = workdir_lock.WorkdirLock(workdir)
  request = gcs_objects._request  # pylint: disable=protected-access

  def failing(*args, **kwargs):
    if threading.current_thread() is holder._renewer:  # pylint: disable=protected-access
      raise ConnectionResetError('injected: the store does not answer')
    return request(*args, **kwargs)
  monkeypatch.setattr(gcs_objects, '_request', failing)
  holder.check()                                  # still within its lease
  second = _take_when_free(workdir)               # once the holder's record is stale
  with pytest.raises(workdir_lock.LeaseLost) as lost:
    holder.check()
  message = str(lost.value)
  assert ('renewals have failed since' in message and 'ConnectionResetError' in message
          and 'without writing anything more' in message and '\n' not in message), message
  monkeypatch.setattr(gcs_objects, '_request', request)   # the store answers the holder again
  owners = []
  for _ in range(8):                              # 2 s: the holder renews no more
    token = _record(second)[1]['token']
    owners.append('B' if token == second._token else 'A')  # pylint: disable=protected-access
    time.sleep(0.25)
  assert owners == ['B'] * 8, owners
  holder.release()                                # leaves the record alone
  second.check()
  assert _record(second)[1]['token'] == second._token    # pylint: disable=protected-access
  second.release()
  assert _record(second)[0] is None


@pytest.mark.parametrize('change', ['replaced', 'deleted'])
def test_a_holder_whose_record_is_not_its_own_stops(gcs, change):
  workdir = f'{gcs}/runs/taken'
  holder = workdir_lock.WorkdirLock(workdir)
  found, _ = gcs_objects.read(holder.path)
  if change == 'replaced':
    other = {'owner': 'pid 7 on other-vm', 'token': 'other', 'lease_seconds': 3}
    gcs_objects.write(holder.path, json.dumps(other).encode(), found.generation)
  else:
    gcs_objects.delete(holder.path, found.generation)
  deadline = time.monotonic() + 5
  while not holder.lost and time.monotonic() < deadline:
    time.sleep(0.05)
  with pytest.raises(workdir_lock.LeaseLost,
                     match='now held by another run .pid 7 on other-vm' if change == 'replaced'
                     else 'was deleted or replaced'):
    holder.check()
  holder.release()
  assert (_record(holder)[1] or {}).get('token') == ('other' if change == 'replaced' else None)


def test_a_write_whose_answer_was_lost_counts_when_the_record_is_its_own(gcs, monkeypatch):
  """The store applies the create and the first renewal but their answers are lost: the
  retries find the generation changed (412), read the record back, and keep it as theirs."""
  workdir = f'{gcs}/runs/answer_lost'
  request, lost = gcs_objects._request, []   # pylint: disable=protected-access

  def answer_lost(fs, method, path, *args, **kwargs):
    answer = request(fs, method, path, *args, **kwargs)
    if method == 'POST' and len(lost) < 2:
      lost.append(threading.current_thread().name)
      raise ConnectionResetError('injected: the answer was lost')
    return answer
  monkeypatch.setattr(gcs_objects, '_request', answer_lost)
  holder = workdir_lock.WorkdirLock(workdir)
  time.sleep(2.5)                                       # the first renewals
  assert lost == ['MainThread', 'workdir-lease'], lost
  holder.check()
  with pytest.raises(BlockingIOError, match='still alive'):
    workdir_lock.WorkdirLock(workdir)
  before = _record(holder)[0].generation
  time.sleep(1)
  assert _record(holder)[0].generation != before        # renewing from the adopted version
  holder.check()
  holder.release()
  assert _record(holder)[0] is None


def test_a_launcher_whose_clock_is_30_s_ahead_is_refused(gcs, monkeypatch):
  workdir = f'{gcs}/runs/clock'
  holder = workdir_lock.WorkdirLock(workdir)
  real_time = time.time
  monkeypatch.setattr(time, 'time', lambda: real_time() + 30)
  with pytest.raises(BlockingIOError, match='still alive .*lease renewed 0 s ago'):
    workdir_lock.WorkdirLock(workdir)
  monkeypatch.setattr(time, 'time', real_time)
  holder.release()


def test_a_shorter_lease_on_a_later_launch_does_not_shorten_the_record(gcs, monkeypatch):
  workdir = f'{gcs}/runs/short'
  monkeypatch.setenv('IREVNET_LEASE_SECONDS', '5')
  holder = workdir_lock.WorkdirLock(workdir)
  holder._stop.set()                 # pylint: disable=protected-access
  holder._renewer.join()             # pylint: disable=protected-access
  # The holder is now a run killed without release: its last record stays 5 s.
  last, _ = gcs_objects.read(holder.path)
  monkeypatch.setenv('IREVNET_LEASE_SECONDS', '0.5')
  time.sleep(1.5)
  with pytest.raises(BlockingIOError, match='lease renewed [12] s ago, it lasts 5 s'):
    workdir_lock.WorkdirLock(workdir)
  second = _take_when_free(workdir)
  taken, _ = gcs_objects.read(second.path)
  assert taken.updated - last.updated > 5      # the record's lease, by the store's clock
  second.release()


def test_a_training_run_that_loses_its_lease_stops_and_writes_nothing_more(gcs, tmp_path):
  """The run logs every 4 steps (metrics.jsonl, TensorBoard) and saves only at its end: from
  3/4 of its lease after its last renewal (before any launch can take the lease) it must
  write nothing, and it ends in one line."""
  workdir = f'{gcs}/runs/lost'
  fail, log = tmp_path / 'fail', tmp_path / 'output.txt'
  args = lib.flag_args(num_train_steps=100000, checkpoint_every_steps=100000,
                       log_every_steps=4) + [f'--workdir={workdir}']
  with open(log, 'w') as output:
    run = subprocess.Popen([sys.executable, LEASE_HELPER, 'train'] + args, cwd=lib.REPO,
                           env={**lib.env_with_devices(4), 'FAIL_RENEWALS_FILE': str(fail)},
                           stdout=output, stderr=subprocess.STDOUT)
  metrics_file = f'{workdir[len("gs://"):]}/metrics.jsonl'
  try:
    deadline = time.monotonic() + 150
    while (run.poll() is None and time.monotonic() < deadline
           and metrics_file not in _objects(workdir)):
      time.sleep(0.2)
    assert run.poll() is None, log.read_text()[-3000:]
    fail.touch()                              # the run's renewals fail from now on
    failing_since = time.monotonic()
    second = _take_when_free(workdir)         # a second launch, once the record is stale
    lease = float(os.environ['IREVNET_LEASE_SECONDS'])
    time.sleep(max(0.0, failing_since + lease - time.monotonic()))
    stopped = _objects(workdir)               # 1/4 lease past the run's own deadline
    code = run.wait(60)
    assert _objects(workdir) == stopped       # nothing written since
    second.release()
  finally:
    if run.poll() is None:
      run.kill()
  output = log.read_text()
  errors = [line for line in output.splitlines() if line.startswith('Error:')]
  assert code == 1 and len(errors) == 1, output[-3000:]
  assert ('lost the lease' in errors[0] and 'renewals have failed since' in errors[0]
          and 'without writing anything more' in errors[0]), errors
  assert 'Traceback' not in output, output[-3000:]
