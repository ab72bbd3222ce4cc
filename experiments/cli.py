"""What the commands in experiments/ share: flag parsing, and user errors that end in one line.

    cli.run(main)      # instead of absl.app.run(main)

A user error ends the process with exit status 1 and without a traceback
(`--verbose` shows it): a bad flag, config file or config field with absl's two
lines `FATAL Flags parsing error: ...`; an `irevnet_jax.UserError` (a value that
cannot work, a missing file or data set, a run that cannot go on) with
`Error: <message>` on stderr. Every other exception is a bug and keeps its
traceback. Log lines print plain (no absl prefix) unless --verbose or --log_dir
(a log file with absl's format).
"""
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging

from experiments import console
from irevnet_jax.errors import UserError

flags.DEFINE_bool('verbose', False, 'Show the Python traceback of errors in your input too.')
flags.DEFINE_bool('compilation_cache', True,
                  "Keep compiled programs on disk and reuse them in later commands "
                  "(JAX's persistent compilation cache); --nocompilation_cache turns it off.")
flags.DEFINE_string('compilation_cache_dir', None,
                    'Directory of the compilation cache (default: $JAX_COMPILATION_CACHE_DIR, '
                    'else ~/.cache/irevnet_jax/jax_cache).')
FLAGS = flags.FLAGS

# The config-file flags that `define_config_flag` defined: loaded while flags are parsed.
_config_file_flags = set()


def _missing_field_message(error, argv):
  """'--config.x.batchsize: ...' from ml_collections' KeyError / AttributeError text."""
  text = str(error).replace('\\', '')
  match = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', text)
  key = match.group(2) if match else (re.match(r"""\W*(\w+)""", text) or [None, None])[1]
  if not isinstance(error, (KeyError, AttributeError)) or not key:
    return None
  flag = next((a.split('=', 1)[0] for a in argv
               if re.match(r'--\w+(\.\w+)+', a) and a.split('=', 1)[0].split('.')[-1] == key),
              f'--config...{key}')
  hint = f' Did you mean {match.group(1)!r}?' if match else ''
  return f'{flag}: the config has no field {key!r}.{hint}'


def _flag_error_message(error, argv) -> str:
  """One line that says which flag is wrong and why."""
  unknown = _missing_field_message(error, argv)
  if unknown:
    return unknown
  return ' '.join(str(error).split())


def _fatal(message):
  print(f'FATAL Flags parsing error: {message}', file=sys.stderr)
  print('Pass --helpshort or --helpfull to see help on flags.', file=sys.stderr)
  sys.exit(1)


# What a bad flag value, config file or override raises while flags are parsed (absl,
# ml_collections and the config file's own code); UserError is a ValueError.
FLAG_ERRORS = (flags.Error, AttributeError, OSError, TypeError, ValueError, KeyError, SyntaxError)


def _define(define, *args, **kwargs):
  """Calls a config_flags DEFINE function. It reads --<name>.<field> overrides at once, so an
  unknown field fails here, at import: reported like any bad flag."""
  try:
    define(*args, **kwargs)
  except FLAG_ERRORS as error:
    if '--verbose' in sys.argv:
      raise
    _fatal(_flag_error_message(error, sys.argv))


def define_config_flag(name: str, default: str, help_string: str):
  """`config_flags.DEFINE_config_file` (locked config): --<name>=FILE, --<name>.<field>=..."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _define(config_flags.DEFINE_config_file, name, default, help_string, lock_config=True)
  _config_file_flags.add(name)


def define_config_dict_flag(name: str, default, help_string: str):
  """`config_flags.DEFINE_config_dict` (locked): --<name>.<field>=... sets the fields of the
  ConfigDict `default`; an unknown field is reported like any bad flag."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _define(config_flags.DEFINE_config_dict, name, default, help_string, lock_config=True)


def _load_config_file(name: str):
  """Loads the config file of flag --<name> now (ml_collections defers a failed load to the
  first use of the config); a UserError naming the file and the cause if it cannot."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flag = FLAGS[name]
  try:
    flag.value.keys()
  except OSError as error:
    path = config_flags.get_config_filename(flag)
    try:   # ml_collections keeps only the text of the file system's error: ask it again
      with open(path.split(':', 1)[0], 'rb'):
        cause = ' '.join(str(error.__cause__ or error).split())
    except OSError as file_error:
      cause = file_error.strerror
    raise UserError(f'--{name}={path}: cannot load the config file ({cause}).') from error


def _parse_flags(argv):
  """absl's flag parsing, plus config files loaded here, so that a bad flag, a missing
  config file or an unknown config field ends in absl's two lines
  (`FATAL Flags parsing error: ...`) instead of a traceback."""
  try:
    rest = FLAGS(argv)
    for name in sorted(_config_file_flags & set(FLAGS)):
      _load_config_file(name)
    return rest
  except FLAG_ERRORS as error:
    if '--verbose' in argv:
      raise
    _fatal(_flag_error_message(error, argv))


def default_cache_dir() -> str:
  """The compilation cache under the user's cache directory ($XDG_CACHE_HOME or ~/.cache)."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'irevnet_jax', 'jax_cache')


def setup_compilation_cache():
  """Turns on JAX's persistent compilation cache (before anything compiles), so that a
  resumed run, `evaluate` and `analyze` of the same config load the compiled programs
  instead of compiling them again. The directory: --compilation_cache_dir, else
  $JAX_COMPILATION_CACHE_DIR (JAX reads it itself), else `default_cache_dir()`.
  Returns the directory, or None when --nocompilation_cache."""
  import jax  # pylint: disable=g-import-not-at-top
  if not FLAGS.compilation_cache:
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  path = (FLAGS.compilation_cache_dir or os.environ.get('JAX_COMPILATION_CACHE_DIR')
          or default_cache_dir())
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', path)
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    # Every program, not only those over JAX's default 1 s: a small model's steps compile
    # in under a second each, and `evaluate` would otherwise compile them every time.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  return path


class CompileTimer:
  """Seconds this process spent compiling or loading compiled programs (XLA back-end
  compiles and compilation cache reads), from JAX's monitoring events."""

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self.seconds, self.programs = 0.0, 0
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event, seconds, **kwargs):
    del kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      self.seconds += seconds
      self.programs += 1


def _guarded(main, argv, flag_example):
  from irevnet_jax import train  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    print(f'Error: Unexpected arguments: {argv[1:]}; flags look like {flag_example}.',
          file=sys.stderr)
    sys.exit(1)
  if not FLAGS.verbose:
    console.quiet_library_logs()
  console.setup(FLAGS.verbose, FLAGS.log_dir)
  try:
    cache_dir = setup_compilation_cache()
    timer = CompileTimer()
    main(argv)
    logging.info('Compiling took %.1f s for %d programs (compilation cache: %s).',
                 timer.seconds, timer.programs, cache_dir or 'off')
  except train.Preempted as preempted:
    logging.warning('%s', preempted)
    sys.exit(preempted.exit_code)   # 143 (SIGTERM) or 130 (Ctrl-C): an interrupted job
  except KeyboardInterrupt:
    print('Interrupted (Ctrl-C).', file=sys.stderr)
    sys.exit(130)
  except UserError as error:   # meant for the user; anything else is a bug: traceback
    if FLAGS.verbose:
      raise
    logging.flush()
    print(f'Error: {console.plain(str(error))}', file=sys.stderr)
    sys.exit(1)


def run(main, flag_example: str = '--workdir=DIR'):
  """`absl.app.run(main)` with this project's flag parsing and error handling; library
  chatter is kept off the console unless --verbose (`console.quiet_library_logs`)."""
  app.run(lambda argv: _guarded(main, argv, flag_example), flags_parser=_parse_flags)
