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

from absl import logging as absl_logging

from irevnet_jax.interop.state_dict_files import plain_text as plain  # no escape codes


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
