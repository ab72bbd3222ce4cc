"""Metric output: TensorBoard events, `<workdir>/metrics.jsonl`, console progress.

Only process 0 writes; on other processes every method is a no-op. Each
`write(step, scalars)` becomes one JSON line `{"step": step, **scalars}` and
one TensorBoard scalar per key (tensorboardX: no TensorFlow needed). The workdir
may be a URL (`gs://...`): both files are then written through `etils.epath`,
each flush replacing the object whole (object stores cannot append).
"""
import json
import math
import os
import time
from typing import Dict, Optional

from absl import logging
from etils import epath

from irevnet_jax.run import workdir as workdir_lib

METRICS_FILE = 'metrics.jsonl'
_ABANDONED = set()   # workdirs (with a trailing /) whose files this process writes no more


class _QuietLibraries:
  """A logging filter for library chatter that is not the user's business: Orbax's INFO
  lines, its warnings about read-only managers (a reader of a run) and its errors (with
  tracebacks; `irevnet_jax.run.checkpoints` reports every failed save or restore in one line),
  and JAX's note that no TPU backend exists on a machine without one."""

  def filter(self, record):
    message = record.getMessage()
    if '/orbax/' in record.pathname:
      return (record.levelno == 30 and 'read only' not in message
              and 'read_only' not in message)
    if record.name.startswith('jax._src.xla_bridge') or 'xla_bridge' in record.pathname:
      return 'Unable to initialize backend' not in message
    return True


def _is_closed_loop_noise(error) -> bool:
  """Orbax's asyncio callbacks after a failed restore print 'Event loop is closed'
  tracebacks by the dozen; they mean nothing once the restore has failed."""
  return isinstance(error, RuntimeError) and 'Event loop is closed' in str(error)


def quiet_library_logs():
  """Keeps the console to this package's lines: drops library chatter (`_QuietLibraries`)
  and Orbax's 'Event loop is closed' tracebacks after a failed restore."""
  import logging as std_logging
  import sys
  import threading
  for handler in [logging.get_absl_handler(), *std_logging.getLogger().handlers]:
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
      handler.addFilter(_QuietLibraries())
  if getattr(sys.excepthook, 'quiet', False):
    return
  excepthook, unraisablehook, thread_hook = sys.excepthook, sys.unraisablehook, threading.excepthook

  def quiet_excepthook(kind, value, tb):
    if not _is_closed_loop_noise(value):
      excepthook(kind, value, tb)

  def quiet_unraisablehook(unraisable):
    if not _is_closed_loop_noise(unraisable.exc_value):
      unraisablehook(unraisable)

  def quiet_thread_hook(args):
    if not _is_closed_loop_noise(args.exc_value):
      thread_hook(args)

  quiet_excepthook.quiet = True
  sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook
  threading.excepthook = quiet_thread_hook


def read_jsonl(workdir) -> list:
  """All records of `<workdir>/metrics.jsonl` (an empty list when there is none)."""
  path = epath.Path(workdir_lib.join(workdir_lib.resolve(workdir), METRICS_FILE))
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ObjectFile:
  """A file on an object store opened for appending: `write`s gather in memory and each
  `flush` (and `close`) replaces the object with everything written so far."""

  def __init__(self, path: str, initial: bytes = b''):
    self.path = epath.Path(path)
    self._data = bytearray(initial)
    self._flushed = None

  def write(self, data):
    self._data += data.encode() if isinstance(data, str) else data

  def flush(self):
    if self._flushed != len(self._data) and not any(
        os.fspath(self.path).startswith(prefix) for prefix in _ABANDONED):
      self.path.write_bytes(bytes(self._data))
      self._flushed = len(self._data)

  def close(self):
    self.flush()


class _ObjectFileFactory:
  """tensorboardX's writer factory for event files on object stores, through epath."""

  def open(self, path):
    return ObjectFile(path)

  def directory_check(self, path):
    del path   # object stores have no folders to create


def _route_tensorboard(url: str):
  """Makes tensorboardX write event files under `url`'s scheme through epath (its own
  gs:// writer needs google-cloud-storage; epath is what Orbax and the rest use)."""
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  record_writer.register_writer_factory(url.split('://', 1)[0], _ObjectFileFactory())


class MetricWriter:
  """Writes scalars to TensorBoard and JSON lines; `enabled=False` makes it silent."""

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0,
               append: bool = False):
    """`resume_step`: on resume, JSON lines of later steps (written by the run that was
    interrupted after its last checkpoint) are dropped, so each step appears once.
    `append`: keep every existing line (for commands that add records to a run, e.g.
    `experiments.evaluate`); `resume_step` is then not used."""
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    workdir = workdir_lib.resolve(workdir)
    self._prefix = workdir.rstrip('/') + '/'
    _ABANDONED.discard(self._prefix)
    self._path = workdir_lib.join(workdir, METRICS_FILE)
    rewrite = workdir_lib.is_url(workdir) or not append   # else: append to the file as it is
    kept = read_jsonl(workdir) if rewrite else []
    if not append:
      kept = [r for r in kept if r.get('step', 0) <= resume_step]
    text = ''.join(json.dumps(r) + '\n' for r in kept)
    if workdir_lib.is_url(workdir):
      self._file = ObjectFile(self._path, text.encode())
      self._file.flush()
      _route_tensorboard(workdir)
    else:
      os.makedirs(workdir, exist_ok=True)
      if not append:
        with open(self._path + '.tmp', 'w') as f:
          f.write(text)
        os.replace(self._path + '.tmp', self._path)
      self._file = open(self._path, 'a')
    from tensorboardX import SummaryWriter  # pure Python, no TensorFlow
    self._tb = SummaryWriter(workdir_lib.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: Dict[str, float]):
    if not self.enabled:
      return
    record = {'step': int(step)}
    record.update({k: float(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    for key, value in scalars.items():
      self._tb.add_scalar(key, float(value), int(step))
    self._tb.flush()

  def abandon(self):
    """Writes nothing more, now or at exit (TensorBoard's own flush included), and drops what
    is not written yet: another run owns the workdir now. Object stores only (a local
    workdir is never lost)."""
    if self.enabled:
      _ABANDONED.add(self._prefix)
      self.enabled = False

  def close(self):
    if self.enabled:
      self._file.close()
      self._tb.close()
      self.enabled = False


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Progress:
  """Console progress: step, loss, steps/s and ETA, from wall time between reports."""

  def __init__(self, start_step: int, total_steps: int, enabled: bool = True):
    self.total_steps = total_steps
    self.enabled = enabled
    self._last_step = start_step
    self._last_time = time.time()

  def steps_per_second(self, step: int) -> float:
    """Steps/s since the previous call (and resets the clock)."""
    now = time.time()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    return rate

  def report(self, step: int, loss: float, rate: float, extra: Optional[str] = None):
    if not self.enabled:
      return
    eta = (self.total_steps - step) / rate if rate > 0 else float('inf')
    line = (f'step {step}/{self.total_steps}  loss {loss:.4f}  {rate:.2f} steps/s  '
            f'ETA {_duration(eta)}')
    logging.info(line + (f'  {extra}' if extra else ''))
