"""Several processes end together, each in one line (irevnet_jax/train/peers.py): 2 processes x
2 CPU devices of the tiny digits run, jax.distributed on localhost with gloo collectives."""
import threading
import time

import pytest

from irevnet_jax.errors import UserError
from irevnet_jax.run import store_errors, workdir as workdir_lib, workdir_lock
from irevnet_jax.train import peers
import train_testlib as lib

# Several processes, kills and races: the second step of .ci/run (`-m processes`), off the
# README's test command for time.
pytestmark = pytest.mark.processes

PEER_TIMEOUT = 5   # seconds without a heartbeat after which a process counts as stopped
C_ABORT = ('Check failure stack trace', 'Fatal Python error')


@pytest.fixture(autouse=True)
def short_peer_timeout(monkeypatch):
  monkeypatch.setenv('IREVNET_PEER_TIMEOUT_SECONDS', str(PEER_TIMEOUT))


def _run_two(workdir, extra=(), per_process=((), ()), script=None, timeout=180):
  """Runs both processes of a 2-process job to their end; returns [(returncode, output,
  seconds from the launch to its end)]."""
  started = time.monotonic()
  processes = lib.start_processes(workdir, extra, per_process, script)
  results = [None, None]

  def wait(index):
    code, output = lib.finish(processes[index], timeout)
    results[index] = (code, output, time.monotonic() - started)

  threads = [threading.Thread(target=wait, args=(index,)) for index in range(2)]
  try:
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  assert None not in results, 'a process outlived its timeout'
  return results


def _error_lines(output):
  return [line for line in output.splitlines() if line.startswith('Error:')]


def test_a_refused_launch_ends_every_process_in_the_same_line(tmp_path):
  workdir = str(tmp_path / 'run')
  holder = workdir_lock.WorkdirLock(workdir_lib.check_workdir(workdir))   # a live run's flock
  try:
    results = _run_two(workdir)
  finally:
    holder.release()
  lines = [_error_lines(output) for _, output, _ in results]
  for index, (code, output, _) in enumerate(results):
    assert code == 1, f'process {index}:\n{output[-3000:]}'
    assert 'Traceback' not in output and 'DEADLINE_EXCEEDED' not in output, output[-3000:]
  assert lines[0] == lines[1] and len(lines[0]) == 1, lines
  assert 'is in use by a run that is still alive' in lines[0][0]
  # Before, process 1 waited 40 s for gloo and ended in a JaxRuntimeError.
  seconds = [s for _, _, s in results]
  assert abs(seconds[0] - seconds[1]) < 10 and max(seconds) < 60, seconds


def test_when_process_1_dies_process_0_ends_in_one_line_and_a_later_refusal_reaches_both(
    tmp_path):
  workdir = str(tmp_path / 'run')
  # Process 1 SIGKILLs itself when it asks for the batch of step 10, once checkpoint 8 is
  # final; process 0 waits in the step's collectives.
  results = _run_two(workdir, script=lib.HELPER,
                     per_process=((), ('--kill_at_step=10', '--wait_for_checkpoint=8')))
  (code_0, output_0, end_0), (code_1, _, end_1) = results
  assert code_1 == -9
  assert code_0 == 1, output_0[-3000:]
  assert _error_lines(output_0) == [
      f'Error: process 1 of 2 stopped answering (no heartbeat for {PEER_TIMEOUT} s); stopping '
      f'this process too (rerun the same command to resume).'], output_0[-3000:]
  assert not any(text in output_0 for text in C_ABORT), output_0[-3000:]
  assert end_0 - end_1 < 4 * PEER_TIMEOUT, (end_0, end_1)   # measured: 3.2-4.9 s
  # Rerun with a changed training field: process 0 refuses it after both restored step 8,
  # while process 1 goes on to its first step; both end with process 0's line.
  results = _run_two(workdir, extra=['--config.learning_rate=0.1'])
  lines = [_error_lines(output) for _, output, _ in results]
  for index, (code, output, _) in enumerate(results):
    assert code == 1, f'process {index}:\n{output[-3000:]}'
    assert not any(text in output for text in C_ABORT + ('Traceback',)), output[-3000:]
  assert lines[0] == lines[1] and len(lines[0]) == 1, lines
  assert 'with changed training field(s): learning_rate: 0.2 -> 0.1' in lines[0][0]


def test_when_process_0_dies_process_1_ends_at_once_in_one_line_naming_it(tmp_path):
  """Process 0 hosts JAX's coordination service: when it dies, JAX's client aborts every
  other process at once from C++ (`peers.Watch` gets no say); experiments/supervisor.py, the
  parent of each process, shows that abort as one line."""
  results = _run_two(str(tmp_path / 'run'), script=lib.HELPER,
                     per_process=(('--kill_at_step=2',), ()))
  (code_0, _, end_0), (code_1, output_1, end_1) = results
  assert code_0 == -9   # the supervisor dies of its child's signal
  assert code_1 == 1, output_1[-3000:]
  assert _error_lines(output_1) == [
      "Error: process 0 (the coordinator) stopped; stopping this process too (see process 0's "
      "log for why; rerun the same command to resume)."], output_1[-3000:]
  for text in C_ABORT + ('Terminating process', 'coordination_service', 'Traceback'):
    assert text not in output_1, output_1[-3000:]
  assert end_1 - end_0 < 120, (end_0, end_1)   # measured: 0.1-0.5 s


def test_an_error_crosses_to_the_other_processes_as_user_error_or_its_built_in_type():
  for error, kind in [(BlockingIOError('in use'), BlockingIOError),
                      (store_errors.StoreUnavailable('gs://b unreachable'), UserError),
                      (workdir_lock.WorkdirInUse('in use'), UserError),
                      (UserError('set model.num_classes=10.'), UserError),
                      (type('Refused', (ValueError,), {})('changed'), ValueError),
                      (KeyboardInterrupt('Ctrl-C'), RuntimeError)]:
    received = peers._decode(peers._encode(error))   # pylint: disable=protected-access
    assert type(received) is kind and str(received) == str(error)
    assert received.from_peer
  assert str(peers._decode(peers._encode(KeyboardInterrupt()))) == 'Interrupted (Ctrl-C).'
