"""The processes of a multi-process run end together, each with one line (jax.distributed).

    opened = peers.chief_decides(lambda: open_workdir(...))   # process 0's result or error
    with peers.Watch():                                        # heartbeats while training
      ...

- `chief_decides`: process 0 runs a check (the workdir check and lock) and every process
  ends the same way: its error is raised on every process with the same message, as a
  UserError if it was one (one line everywhere), else as its nearest built-in type.
- `Watch`: a thread that heartbeats through JAX's distributed key-value store and reads the
  others'. When a process stops answering (killed, hung) or fails, every other one logs one
  line naming it and ends itself (exit status 1), instead of waiting in a collective until
  JAX's own heartbeat timeout aborts it with a C++ stack trace. A process that fails posts
  its error first, so the others end with the same line; process 0, which hosts JAX's
  coordination service, ends last (the others' JAX clients abort when it goes).
- `timeout_seconds`: `$IREVNET_PEER_TIMEOUT_SECONDS` (default 60);
  `jax_heartbeat_timeout_seconds` keeps JAX's own detection later than ours.

Nothing here does anything in a single process. When process 0 itself dies, JAX's client
aborts every other process at once from C++ (its only hook, `missed_heartbeat_callback`,
takes no Python function in jaxlib 0.10), before `Watch` can act; the commands'
supervising parent (experiments/supervisor.py) shows that abort as one line naming process 0.
"""
import atexit
import builtins
import itertools
import os
import sys
import threading
import time
from typing import Callable, Dict, Optional, TypeVar

from absl import logging
import jax

from irevnet_jax.errors import UserError

T = TypeVar('T')
PREFIX = 'irevnet_jax/peers'
CHIEF_WAIT_SECONDS = 600      # how long the others wait for process 0's check
_calls = itertools.count()    # each call of `chief_decides` / `Watch` gets its own keys


def timeout_seconds() -> float:
  """Seconds without a heartbeat after which a process counts as stopped."""
  return float(os.environ.get('IREVNET_PEER_TIMEOUT_SECONDS', '60'))


def jax_heartbeat_timeout_seconds() -> int:
  """For `jax.distributed.initialize`: JAX's own detection of a dead process (which aborts
  the others) comes well after `Watch`'s (JAX's default: 100 s)."""
  return int(max(100, 2 * timeout_seconds()))


def _client():
  """JAX's distributed runtime client, or None in a single process."""
  if jax.process_count() == 1:
    return None
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


def _encode(error: BaseException) -> str:
  """'UserError\n<message>' for a UserError (any subclass), else '<its nearest built-in
  class>\n<message>'."""
  kind = UserError if isinstance(error, UserError) else next(
      k for k in type(error).__mro__ if getattr(builtins, k.__name__, None) is k)
  message = str(error) or ('Interrupted (Ctrl-C).' if isinstance(error, KeyboardInterrupt)
                           else kind.__name__)
  return f'{kind.__name__}\n{message}'


def _decode(text: str) -> BaseException:
  """The error `_encode` wrote (RuntimeError for one that is not an Exception)."""
  name, message = text.split('\n', 1)
  kind = UserError if name == UserError.__name__ else getattr(builtins, name)
  if not issubclass(kind, Exception) or issubclass(kind, KeyError):
    kind = RuntimeError   # KeyboardInterrupt; KeyError would quote the message again
  error = kind(message)
  error.from_peer = True
  return error


def chief_decides(work: Callable[[], T]) -> Optional[T]:
  """Runs `work` on process 0 and returns its result there (None on the others); if it
  raises, every process raises it with the same message (a UserError as a UserError), so a
  refused launch ends in the same line everywhere. The others wait for process 0's answer."""
  client = _client()
  if client is None:
    return work()
  key = f'{PREFIX}/{next(_calls)}/chief'
  if jax.process_index() == 0:
    try:
      result = work()
    except Exception as error:
      client.key_value_set(key, _encode(error))
      error.from_peer = True   # every process raises it: nobody needs telling
      raise
    client.key_value_set(key, '')
    return result
  try:
    answer = client.blocking_key_value_get(key, CHIEF_WAIT_SECONDS * 1000)
  except jax.errors.JaxRuntimeError:
    raise UserError(f'Process 0 did not answer in {CHIEF_WAIT_SECONDS} s (it checks and '
                    f'locks the workdir); see its log.') from None
  if answer:
    raise _decode(answer)
  return None


class Watch:
  """Heartbeats of every process while this is entered (module docstring). On leaving with
  an error that the others do not know of yet, posts it; at exit, a failed process ends
  without JAX's shutdown barrier (which would wait for the stopped ones)."""

  def __init__(self, timeout: Optional[float] = None):
    self.timeout = timeout_seconds() if timeout is None else float(timeout)
    self.interval = max(0.1, self.timeout / 10)
    self._client = _client()
    self._me, self._count = jax.process_index(), jax.process_count()
    self._dir = f'{PREFIX}/{next(_calls)}/'
    self._closed = threading.Event()
    self._stopping = threading.Lock()   # held by the one path that ends this process
    self._thread = None

  def __enter__(self):
    if self._client is not None:
      self._set('beat', '0')
      self._thread = threading.Thread(target=self._run, name='irevnet_jax peers', daemon=True)
      self._thread.start()
    return self

  def __exit__(self, kind, error, tb):
    if self._client is None:
      return False
    if error is not None and not _is_clean_stop(error):
      if isinstance(error, jax.errors.JaxRuntimeError):
        # A collective whose peer went away (gloo: 'Connection closed by peer'): the watch
        # thread names the stopped process within its timeout.
        self._closed.wait(self.timeout + 2 * self.interval)
      if not self._stopping.acquire(blocking=False):
        threading.Event().wait()   # the watch thread is ending this process already
      self._closed.set()
      self._set('failed', _encode(error))
      code = 130 if isinstance(error, KeyboardInterrupt) else 1
      atexit.register(self._exit, code, None)   # after the caller has printed the error
    else:
      self._closed.set()
      self._set('done', '')
    self._thread.join()
    return False

  def _set(self, what, value):
    try:
      self._client.key_value_set(f'{self._dir}{what}/{self._me}', value, allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      pass   # the coordinator is gone: nothing left to tell

  def _read(self) -> Dict[str, Dict[int, str]]:
    """{'beat' | 'done' | 'failed' | 'stopping': {process: value}}."""
    found = {}
    for key, value in self._client.key_value_dir_get(self._dir):
      what, process = key[len(self._dir):].rsplit('/', 1)
      found.setdefault(what, {})[int(process)] = value
    return found

  def _run(self):
    beat, last_change = 0, {}   # process -> (heartbeat seen, when it changed)
    unreachable_since = None
    while not self._closed.wait(self.interval):
      beat += 1
      now = time.monotonic()
      try:
        self._set('beat', str(beat))
        found = self._read()
        unreachable_since = None
      except Exception:  # pylint: disable=broad-except
        unreachable_since = unreachable_since or now
        if now - unreachable_since > self.timeout:
          self._stop(f'process 0 (the coordinator) stopped answering for {self.timeout:.0f} '
                     f's; stopping this process too (rerun the same command to resume).')
        continue
      failed = {p: m for p, m in found.get('failed', {}).items() if p != self._me}
      if failed:
        process, text = min(failed.items())
        message = str(_decode(text))
        self._stop(message if process == 0 else f'process {process} stopped: {message}')
        continue
      ended = set(found.get('done', {})) | set(found.get('stopping', {}))
      for process in range(self._count):
        if process == self._me or process in ended:
          continue
        seen = found.get('beat', {}).get(process)
        if process not in last_change or last_change[process][0] != seen:
          last_change[process] = (seen, now)
        elif now - last_change[process][1] > self.timeout:
          self._stop(f'process {process} of {self._count} stopped answering (no heartbeat '
                     f'for {self.timeout:.0f} s); stopping this process too (rerun the same '
                     f'command to resume).', dead={process})

  def _stop(self, message, dead=()):
    """Logs `message` as this process's last line and ends it."""
    if not self._stopping.acquire(blocking=False):
      return   # the main thread is ending this process
    self._closed.set()
    try:
      logging.flush()
      print(f'Error: {message}', file=sys.stderr, flush=True)
    finally:
      self._exit(1, dead)   # the main thread waits for this

  def _exit(self, code, dead):
    """Ends this process without JAX's shutdown barrier; process 0 (JAX's coordination
    service: the others abort when it goes) first waits a little for the others to end."""
    self._set('stopping', '')
    deadline = time.monotonic() + min(10.0, self.timeout)
    while self._me == 0 and time.monotonic() < deadline:
      try:
        found = self._read()
      except Exception:  # pylint: disable=broad-except
        break
      ended = set(found.get('done', {})) | set(found.get('stopping', {})) | set(dead or ())
      if ended >= set(range(self._count)):
        break
      time.sleep(0.05)
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _is_clean_stop(error) -> bool:
  """A stop that every process makes at the same step (preemption), or an error that every
  process raised alike (`chief_decides`): JAX's normal shutdown follows."""
  from irevnet_jax.train.preemption import Preempted  # pylint: disable=g-import-not-at-top
  return isinstance(error, Preempted) or getattr(error, 'from_peer', False)
