"""What the commands print: plain log lines, errors without terminal escape codes.

    console.setup(verbose, log_dir)    # once flags are parsed (experiments.cli does it)

Progress, eval lines and summaries print as the message alone (`WARNING: ` /
`ERROR: ` before warnings and errors), as Flax's and big_vision's runners show
them, without absl's `I1204 14:01:33.545115 139897801108352 metrics.py:150]`
prefix; --verbose keeps absl's format, --log_dir=DIR writes absl's log file.
Without --verbose TensorFlow Datasets' warnings and the object-store libraries' notes
(gcsfs, fsspec, Google's auth and HTTP clients) below ERROR stay off the console.
"""
import logging
import os
import sys
import threading
import warnings

from absl import logging as absl_logging

from irevnet_jax.interop.state_dict_files import plain_text as plain  # no escape codes
from irevnet_jax.run.orbax_logs import REPORTED_FAILURES


class PlainFormatter(logging.Formatter):
  """The message alone, its level before it from WARNING up."""

  def format(self, record):
    text = super().format(record)
    return text if record.levelno < logging.WARNING else f'{record.levelname}: {text}'


def _not_tfds_chatter(record) -> bool:
  """False for TensorFlow Datasets' warnings, e.g. 'Variant folder ... has no
  dataset_info.json' before this package's 'not prepared' guide."""
  return not ('/tensorflow_datasets/' in record.pathname and record.levelno < logging.ERROR)


STORAGE_LOGGERS = ('gcsfs', 'fsspec', 'google', 'urllib3', 'aiohttp')


def _not_storage_chatter(record) -> bool:
  """False for the object-store libraries' notes below ERROR on every gs:// command, e.g.
  gcsfs's 'Could not determine bucket type ... falling back to GCSFileSystem' or fsspec's
  'AdaptiveReadaheadCache enabled (...)': what fails reaches the user as this project's
  own one-line error."""
  return not (record.name.split('.')[0] in STORAGE_LOGGERS and record.levelno < logging.ERROR)


def setup(verbose: bool, log_dir: str = ''):
  handler = absl_logging.get_absl_handler()
  if log_dir:
    handler.use_absl_log_file(log_dir=log_dir)
  elif not verbose:
    handler.setFormatter(PlainFormatter('%(message)s'))
  if not verbose:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')   # TensorFlow's C++ warnings, at import
    handler.addFilter(_not_tfds_chatter)
    handler.addFilter(_not_storage_chatter)


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
  """Keeps the console to this package's lines: drops library chatter (`_QuietLibraries`),
  asyncio's 'never retrieved' records of checkpoints already reported in one line
  (`orbax_logs.REPORTED_FAILURES`) and Orbax's 'Event loop is closed' tracebacks after a
  failed restore. The commands' console policy: it replaces this process's exception
  hooks, which no module of irevnet_jax does."""
  # A run that lost its lease ends without waiting for a save in flight; Orbax's coroutines of
  # that save are then collected unawaited (a RuntimeWarning each, at exit).
  warnings.filterwarnings('ignore', message=r"coroutine '.*' was never awaited",
                          category=RuntimeWarning)
  if REPORTED_FAILURES not in logging.getLogger('asyncio').filters:
    logging.getLogger('asyncio').addFilter(REPORTED_FAILURES)
  for handler in [absl_logging.get_absl_handler(), *logging.getLogger().handlers]:
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
