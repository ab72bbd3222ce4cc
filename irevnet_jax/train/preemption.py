"""Stopping a run cleanly: SIGTERM, Ctrl-C and multi-host preemption notices become a flag.

    watch = StopWatch()          # installs the handlers (main thread, single process)
    if watch.reached(step):      # between steps: save, then raise Preempted(step, watch.signum)
    watch.stop_now()             # between evaluation batches
    watch.close()                # the previous handlers back

The loop reads the flag only between steps and evaluation batches, so a stop never
interrupts a step or a save; `Preempted` is raised once the state is saved.
"""
import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
  """Raised after SIGTERM or Ctrl-C (or a multi-host preemption notice) once the state is
  saved; `exit_code` is 143 (SIGTERM) or 130 (Ctrl-C)."""

  def __init__(self, step, signum=signal.SIGTERM):
    name = 'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'
    super().__init__(f'Stopped by {name}: saved a checkpoint at step {step}; rerun the same '
                     f'command to resume.')
    self.step = step
    self.exit_code = 128 + int(signum)


class StopWatch:
  """Turns SIGTERM and Ctrl-C into a flag read between steps and evaluation batches (single
  process); with several processes, JAX's preemption sync point makes all of them stop at
  the same step (SIGTERM)."""

  def __init__(self):
    self.signum = None
    self._previous = {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    if signum == signal.SIGINT:   # a second Ctrl-C interrupts at once
      signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

  def stop_now(self) -> bool:
    """Whether a stop was asked for (this process only; cheap: read between batches)."""
    return self.signum is not None

  def reached(self, step: int) -> bool:
    """Whether to stop after `step`: all processes agree (JAX's preemption sync point)."""
    if jax.process_count() > 1:
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.signum = signal.SIGTERM
      except RuntimeError:  # no preemption service (jax.distributed not initialised)
        pass
    return self.stop_now()

  def close(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
