"""experiments/supervisor.py without training processes: which commands it supervises, what
of the child's stderr it shows (JAX's C++ abort texts as jaxlib 0.10 prints them)."""
import os
import subprocess
import sys

from experiments import supervisor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Process 1's stderr when process 0 (the coordinator) was SIGKILLed (jaxlib 0.10.2; shortened).
COORDINATOR_GONE = b"""\
E1206 07:29:33.187993   15696 preemption_sync_manager.cc:159] Failed to cancel preemption
E1206 07:29:33.188064   15696 coordination_service_agent.cc:289] Polled an error from ...
F1206 07:29:33.188069   15696 client.h:80] Terminating process because the JAX distributed \
service detected fatal errors. ... absl::Status: UNAVAILABLE: Failed to send RPC to \
coordination service. Either the leader task was preempted/died/restarted unexpectedly ...
Additional GRPC error information from remote target coordination_service while calling ...
:UNKNOWN:Error received from peer  {grpc_message:"Socket closed", grpc_status:14}
*** Check failure stack trace: ***
    @     0x7fbcdf040634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
Fatal Python error: Aborted
"""
# Process 0's stderr when JAX's own heartbeat found process 1 dead.
TASK_GONE = b"""\
F1206 07:29:45.138502   15944 client.h:80] Terminating process because the JAX distributed \
service detected fatal errors. absl::Status: UNAVAILABLE: The following tasks are unhealthy \
(stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error.
*** Check failure stack trace: ***
"""


def _shown(text):
  """The lines a StderrFilter shows of `text` (all at once), and the abort's text."""
  stderr_filter = supervisor.StderrFilter(hold_seconds=1.0)
  shown = []
  for line in text.splitlines(keepends=True):
    shown += stderr_filter.add(line, 0.0)
  return shown + stderr_filter.close(), stderr_filter.fatal


def test_only_multi_process_commands_are_supervised():
  for argv, expected in [
      (['main.py', '--workdir=run'], False),
      (['main.py', '--distributed'], True),
      (['main.py', '--distributed=false'], False),
      (['main.py', '--distributed', '--nodistributed'], False),
      (['main.py', '--coordinator_address=localhost:1234', '--process_id=1'], True),
      (['main.py', '--coordinator_address', 'localhost:1234'], True),
      (['main.py', '--coordinator_address='], False),
      (['main.py', '--', '--distributed'], False)]:
    assert supervisor.is_multi_process(argv) is expected, argv


def test_the_coordination_abort_becomes_one_line_naming_the_dead_process():
  before = [b'Connecting to JAX distributed service on localhost:1\n', b'step 8: loss 1.2\n']
  shown, fatal = _shown(b''.join(before) + COORDINATOR_GONE)
  assert shown == before   # the C++ block before the abort is dropped with it
  assert supervisor.coordination_error_line(fatal).startswith(
      'Error: process 0 (the coordinator) stopped; stopping this process too')
  shown, fatal = _shown(TASK_GONE)
  assert shown == [] and supervisor.coordination_error_line(fatal).startswith(
      "Error: process 1 stopped answering (JAX's heartbeat)")


def test_other_cpp_lines_are_shown_after_the_hold():
  warning = b'W1206 07:29:33.187993   15696 gloo.cc:1] slow peer\n'
  lines = [warning, b'continued\n', b'step 8: loss 1.2\n', b'step 9: loss 1.1\n']
  stderr_filter = supervisor.StderrFilter(hold_seconds=1.0)
  assert stderr_filter.add(lines[0], 0.0) == [] and stderr_filter.add(lines[1], 0.5) == []
  assert stderr_filter.tick(0.9) == []
  assert stderr_filter.add(lines[2], 1.0) == lines[:3]   # held no longer than the hold
  assert stderr_filter.add(lines[3], 1.1) == lines[3:] and stderr_filter.fatal is None
  # Nothing after it: the next tick shows it.
  assert stderr_filter.add(warning, 2.0) == [] and stderr_filter.tick(3.0) == [warning]


def test_the_supervising_parent_imports_no_jax():
  code = ('import sys; from experiments import supervisor; '
          'print(sorted({m.split(".")[0] for m in sys.modules} & {"jax", "absl", "irevnet_jax"}))')
  output = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=60, check=True, cwd=REPO).stdout
  assert output.strip() == '[]'
