"""A multi-process run ends in one line when process 0 dies too (console policy).

    # a command's __main__, before jax is imported:
    supervisor.supervise_if_distributed()   # several processes: never returns here

Process 0 hosts JAX's coordination service. When it dies, JAX's client in every other
process aborts at once from C++ (`Terminating process because the JAX distributed service
detected fatal errors`, a stack trace, SIGABRT) before Python can say anything; its only hook,
`missed_heartbeat_callback`, takes no Python function (jaxlib 0.10: std::bad_cast). So with
--distributed or --coordinator_address the command runs as a child of a small parent (no jax)
that:
- streams the child's stdout as it comes and its stderr line by line (the child runs with
  PYTHONUNBUFFERED); C++ log lines (`E1206 07:29:33.18 123 file.cc:89] ...`) and the lines
  after them are held back for up to `HOLD_SECONDS`, so that the block before a fatal
  coordination error can be dropped with it;
- forwards SIGTERM, SIGINT and SIGHUP to the child (in its own process group: a terminal's
  Ctrl-C reaches it once); the child dies with the parent (PR_SET_PDEATHSIG, SIGKILL);
- ends as the child ended: its exit status (143 / 130 after a preemption stop), or killed by
  the same signal; after JAX's coordination-service abort, one line naming the process that
  stopped and exit status 1.
A single process runs as before, without a child. A --flagfile is not read here.
"""
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence

CHILD_MARKER = 'IREVNET_SUPERVISED'   # set in the child's environment
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
HOLD_SECONDS = 1.0
_CPP_LOG_LINE = re.compile(rb'^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.-]+:\d+\] ')
_FATAL = b'JAX distributed service detected fatal errors'
_UNHEALTHY = re.compile(rb'tasks are unhealthy[^:]*:\s*([\d\s,]+)')


def is_multi_process(argv: Sequence[str]) -> bool:
  """Whether absl flags in `argv[1:]` ask for jax.distributed (experiments.main's --distributed,
  --coordinator_address); the last one of a flag counts."""
  found = {}
  args = list(argv[1:])
  for index, arg in enumerate(args):
    if arg == '--':
      break
    name, equals, value = arg.lstrip('-').partition('=')
    if not arg.startswith('-'):
      continue
    if name in ('distributed', 'nodistributed'):
      found['distributed'] = (name == 'distributed'
                              and value.lower() not in ('false', 'f', '0', 'no', 'n'))
    elif name == 'coordinator_address':
      found['coordinator'] = bool(value if equals else index + 1 < len(args))
  return any(found.values())


def coordination_error_line(fatal: bytes) -> str:
  """The one line for JAX's coordination-service abort whose text is `fatal`."""
  unhealthy = _UNHEALTHY.search(fatal)
  if unhealthy:   # the service (process 0) saw other processes stop
    numbers = ', '.join(re.findall(r'\d+', unhealthy.group(1).decode()))
    return (f'Error: process {numbers} stopped answering (JAX\'s heartbeat); stopping this '
            f'process too (rerun the same command to resume).')
  return ('Error: process 0 (the coordinator) stopped; stopping this process too (see '
          'process 0\'s log for why; rerun the same command to resume).')


class StderrFilter:
  """The child's stderr lines to show: `add` a line as it comes, `tick` now and then,
  `close` at the end; each returns the lines to write now. `fatal` holds the text of a
  coordination-service abort once one is seen (then nothing more is shown)."""

  def __init__(self, hold_seconds: float = HOLD_SECONDS):
    self.hold_seconds = hold_seconds
    self.fatal: Optional[bytes] = None
    self._held: List[bytes] = []
    self._held_since = 0.0

  def add(self, line: bytes, now: float) -> List[bytes]:
    if self.fatal is not None:
      self.fatal += line
      return []
    if _FATAL in line:
      self.fatal, self._held = line, []
      return []
    if self._held or _CPP_LOG_LINE.match(line):
      self._held_since = self._held_since if self._held else now
      self._held.append(line)
      return self.tick(now)
    return [line]

  def tick(self, now: float) -> List[bytes]:
    if self._held and now - self._held_since >= self.hold_seconds:
      return self.close()
    return []

  def close(self) -> List[bytes]:
    held, self._held = self._held, []
    return held


def _pump(source, sink, stderr_filter=None):
  """Copies `source` (a pipe) to `sink` (a binary stream) until its end, through the filter."""
  fd, rest = source.fileno(), b''
  while True:
    readable, _, _ = select.select([fd], [], [], 0.2)
    chunk = os.read(fd, 1 << 16) if readable else None
    if stderr_filter is None:
      if chunk == b'':
        return
      lines = [chunk] if chunk else []
    else:
      lines = stderr_filter.tick(time.monotonic())
      if chunk:
        *complete, rest = (rest + chunk).split(b'\n')
        for line in complete:
          lines += stderr_filter.add(line + b'\n', time.monotonic())
      elif chunk == b'':
        lines += (stderr_filter.add(rest, time.monotonic()) if rest else [])
        lines += stderr_filter.close()
    if lines:
      try:
        sink.write(b''.join(lines))
        sink.flush()
      except OSError:
        pass   # our own console is gone: the child goes on
    if chunk == b'':
      return


def _die_with_child_on_linux():
  """For the child (preexec_fn): SIGKILL when the parent dies."""
  if not sys.platform.startswith('linux'):
    return None
  import ctypes  # pylint: disable=g-import-not-at-top
  libc = ctypes.CDLL(None, use_errno=True)
  parent = os.getpid()

  def in_child():
    libc.prctl(1, int(signal.SIGKILL))   # PR_SET_PDEATHSIG
    if os.getppid() != parent:
      os._exit(1)   # the parent died before prctl
  return in_child


def supervise(command: Sequence[str]) -> int:
  """Runs `command` as a child as the module docstring says; returns the exit status (after
  printing the one line), unless the child was killed by a signal: then this process dies
  of the same signal."""
  env = dict(os.environ, **{CHILD_MARKER: '1'})
  env.setdefault('PYTHONUNBUFFERED', '1')
  child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           process_group=0, preexec_fn=_die_with_child_on_linux())
  for signum in FORWARDED:
    signal.signal(signum, lambda signum, frame: child.send_signal(signum))
  stderr_filter = StderrFilter()
  pumps = [threading.Thread(target=_pump, args=(child.stdout, sys.stdout.buffer), daemon=True),
           threading.Thread(target=_pump, args=(child.stderr, sys.stderr.buffer, stderr_filter),
                            daemon=True)]
  for pump in pumps:
    pump.start()
  code = child.wait()
  for pump in pumps:
    pump.join(timeout=5)   # a grandchild may hold the pipes open
  if stderr_filter.fatal is not None:
    print(coordination_error_line(stderr_filter.fatal), file=sys.stderr, flush=True)
    return 1
  if code < 0:
    if -code in FORWARDED:
      signal.signal(-code, signal.SIG_DFL)
    import resource  # pylint: disable=g-import-not-at-top
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # the child's core is the one to read
    os.kill(os.getpid(), -code)
    return 128 - code
  return code


def supervise_if_distributed():
  """In a command's __main__: with several processes (and not in the child already), runs
  this same command in a supervised child and exits as it ended; otherwise returns."""
  if os.environ.get(CHILD_MARKER) or not is_multi_process(sys.argv):
    return
  sys.exit(supervise([sys.executable] + sys.orig_argv[1:]))
