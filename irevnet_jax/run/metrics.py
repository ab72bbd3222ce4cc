"""Metric output: TensorBoard events, `<workdir>/metrics.jsonl`, console progress.

Only process 0 writes; on other processes every method is a no-op. Each
`write(step, scalars)` becomes one JSON line `{"step": step, **scalars}` and
one TensorBoard scalar per key (tensorboardX's protos: no TensorFlow needed), both
flushed before `write` returns, so a killed run loses no record it wrote. The workdir
may be a URL (`gs://...`): both files are then written through `paths.write_bytes`,
each flush replacing the object whole (object stores cannot append).
"""
import json
import math
import os
import socket
import time
from typing import Dict, Optional

from absl import logging

from irevnet_jax.run import paths

METRICS_FILE = 'metrics.jsonl'
_ABANDONED = set()   # workdirs (with a trailing /) whose files this process writes no more


def read_jsonl(workdir) -> list:
  """All records of `<workdir>/metrics.jsonl` (an empty list when there is none)."""
  text = paths.read_text(paths.join(paths.resolve(workdir), METRICS_FILE))
  return [json.loads(line) for line in (text or '').splitlines() if line.strip()]


class ObjectFile:
  """A file on an object store opened for appending: `write`s gather in memory and each
  `flush` (and `close`) replaces the object with everything written so far
  (`paths.write_bytes`: retried while the store fails transiently)."""

  def __init__(self, path: str, initial: bytes = b''):
    self.path = os.fspath(path)
    self._data = bytearray(initial)
    self._flushed = None

  def write(self, data):
    self._data += data.encode() if isinstance(data, str) else data

  def flush(self):
    if self._flushed != len(self._data) and not any(
        self.path.startswith(prefix) for prefix in _ABANDONED):
      paths.write_bytes(self.path, self._data)
      self._flushed = len(self._data)

  def close(self):
    self.flush()


class _ObjectFileFactory:
  """tensorboardX's writer factory for event files on object stores (`ObjectFile`)."""

  def open(self, path):
    return ObjectFile(path)

  def directory_check(self, path):
    del path   # object stores have no folders to create


def _route_tensorboard(url: str):
  """Makes tensorboardX write event files under `url`'s scheme as `ObjectFile`s (its own
  gs:// writer needs google-cloud-storage; gcsfs is what the run's other files use)."""
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  record_writer.register_writer_factory(url.split('://', 1)[0], _ObjectFileFactory())


class _EventFile:
  """One TensorBoard event file, `<logdir>/events.out.tfevents.<s>.<host>.<ns>` (names sort
  by creation time, to the nanosecond), written at once: tensorboardX's `SummaryWriter`
  hands events to a background thread and its `flush()` does not wait for them, so the
  last points before a kill were lost.

  `purge_step`: starts the file with a `SessionLog.START` event at that step (what
  tensorboardX's `purge_step` writes), after which TensorBoard drops the points of the
  earlier event files at that step and later (those of a run killed after its checkpoint).
  """

  def __init__(self, logdir: str, purge_step: Optional[int] = None):
    from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
    self._pb = event_pb2
    now = time.time_ns()
    name = f'events.out.tfevents.{now // 10**9}.{socket.gethostname()}.{now % 10**9:09d}'
    record_writer.directory_check(logdir)
    self._records = record_writer.RecordWriter(paths.join(logdir, name))
    self._write(event_pb2.Event(wall_time=now / 1e9, file_version='brain.Event:2'))
    if purge_step is not None:
      start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
      self._write(event_pb2.Event(wall_time=now / 1e9, step=purge_step, session_log=start))
    self._records.flush()

  def _write(self, event):
    self._records.write(event.SerializeToString())

  def add_scalars(self, step: int, scalars: Dict[str, float]):
    """Writes one event per scalar and flushes them to the file (or the object)."""
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    for key, value in scalars.items():
      self._write(self._pb.Event(wall_time=time.time(), step=step,
                                 summary=summary.scalar(key, float(value))))
    self._records.flush()

  def close(self):
    self._records.close()


class MetricWriter:
  """Writes scalars to TensorBoard and JSON lines; `enabled=False` makes it silent."""

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0,
               append: bool = False):
    """`resume_step`: JSON lines of later steps (written by a run that was interrupted
    after its last checkpoint) are dropped, and TensorBoard is told to drop its points
    of later steps (`_EventFile`'s `purge_step`), so each step appears once.
    `append`: keep every existing line and point (for commands that add records to a run,
    e.g. `experiments.evaluate`); `resume_step` is then not used."""
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    workdir = paths.resolve(workdir)
    self._prefix = workdir.rstrip('/') + '/'
    _ABANDONED.discard(self._prefix)
    self._path = paths.join(workdir, METRICS_FILE)
    rewrite = paths.is_url(workdir) or not append   # else: append to the file as it is
    kept = read_jsonl(workdir) if rewrite else []
    if not append:
      kept = [r for r in kept if r.get('step', 0) <= resume_step]
    text = ''.join(json.dumps(r) + '\n' for r in kept)
    if paths.is_url(workdir):
      self._file = ObjectFile(self._path, text.encode())
      self._file.flush()
      _route_tensorboard(workdir)
    else:
      os.makedirs(workdir, exist_ok=True)
      if not append:
        paths.write_bytes(self._path, text.encode())
      self._file = open(self._path, 'a')
    self._tb = _EventFile(paths.join(workdir, 'tensorboard'),
                          purge_step=None if append else int(resume_step) + 1)

  def write(self, step: int, scalars: Dict[str, float]):
    if not self.enabled:
      return
    record = {'step': int(step)}
    record.update({k: float(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    self._tb.add_scalars(int(step), scalars)

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
