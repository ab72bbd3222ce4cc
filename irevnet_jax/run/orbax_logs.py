"""Orbax log records that `irevnet_jax.run.checkpoints` or `checkpoint_restore` has already
reported in its own words, or that are not the user's business."""
import contextlib
import logging as std_logging


class ReportedFailures(std_logging.Filter):
  """Drops asyncio's 'exception was never retrieved' records of Orbax's per-array read or
  write tasks in a checkpoint that `restore` has already reported as unusable, or whose save
  has been reported as failed, in one line (they surface later, often at interpreter exit,
  one traceback per array)."""

  def __init__(self):
    super().__init__()
    self.paths = set()

  def filter(self, record):
    message = record.getMessage()
    return not ('never retrieved' in message and any(p in message for p in self.paths))


class ReadOnlyNotes(std_logging.Filter):
  """Orbax's notes that a manager opened read-only is read-only ('Given directory is read
  only=...'): said on every `load_run`, they are not the user's business."""

  def filter(self, record):
    message = record.getMessage()
    return not ('/orbax/' in record.pathname and
                ('read only' in message or 'read_only' in message))


@contextlib.contextmanager
def quiet_read_only():
  """Drops `ReadOnlyNotes` from absl's logger while the block runs."""
  absl_logger = std_logging.getLogger('absl')
  note_filter = ReadOnlyNotes()
  absl_logger.addFilter(note_filter)
  try:
    yield
  finally:
    absl_logger.removeFilter(note_filter)


# The process's one filter of reported failures: `checkpoints` (failed saves) and
# `checkpoint_restore` (unusable checkpoints) add the paths they have reported. Importing
# this module installs nothing; the commands (and the test suite) put it on asyncio's
# logger (`experiments.console.quiet_library_logs`).
REPORTED_FAILURES = ReportedFailures()
