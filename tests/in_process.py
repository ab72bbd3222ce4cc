"""Runs a command of experiments/ in this process, as `python -m <module> args` would run it.

    code, output = in_process.command('experiments.evaluate', '--workdir=...', ...)

The same `cli.run` as on the command line (absl flag parsing, config-file overrides, one-line
errors, exit status), without starting Python, importing JAX and compiling again: `code` is
the exit status (0, 1, 143, ...), `output` what it printed (stdout, stderr and log lines, in
order). The command sees this process's devices (4 CPU devices, conftest) and the suite's
compilation cache. Subprocesses stay where the process is what is tested: signals, kills,
several processes, a clean import.

How: the command module and the modules of experiments/ that define flags are imported anew
with sys.argv set (ml_collections' config flags read their overrides from it), after the
flags a previous command defined are deleted; afterwards the flags are unparsed and the
logging handlers get back their formatter, filters and stream.
"""
import contextlib
import importlib
import io
import logging
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging

from experiments import cli  # noqa: F401  (defines --verbose etc. once, kept between runs)

FLAGS = flags.FLAGS
# What stays between runs: flags and modules that exist before any command is imported.
_KEPT_FLAGS = frozenset(FLAGS)
_KEPT_MODULES = frozenset(name for name in sys.modules if name.startswith('experiments'))


def _forget_commands():
  """Deletes the flags and modules that earlier commands defined / imported."""
  for name in set(FLAGS) - _KEPT_FLAGS:
    delattr(FLAGS, name)
  for name in [n for n in sys.modules if n.startswith('experiments.')
               and n not in _KEPT_MODULES and not n.startswith('experiments.configs')]:
    del sys.modules[name]


@contextlib.contextmanager
def _restored_logging():
  """Puts the root logger's handlers and the absl handler's formatter, filters and stream
  back as they were (console.setup and console.quiet_library_logs change them)."""
  root = logging.getLogger()
  absl_handler = absl_logging.get_absl_handler()
  python_handler = absl_handler.python_handler
  saved_root = (root.handlers[:], root.level)
  saved = [(h, h.formatter, h.filters[:]) for h in {absl_handler, python_handler,
                                                      *root.handlers}]
  saved_stream = python_handler.stream
  try:
    yield
  finally:
    root.handlers[:], _ = saved_root
    root.setLevel(saved_root[1])
    for handler, formatter, filters in saved:
      handler.setFormatter(formatter)
      handler.filters[:] = filters
    python_handler.stream = saved_stream


def command(module: str, *args: str):
  """Runs `python -m module args` here; returns (exit status, output)."""
  output = io.StringIO()
  argv = [module, *map(str, args)]
  saved_argv = sys.argv
  _forget_commands()
  FLAGS.unparse_flags()
  with _restored_logging(), contextlib.redirect_stdout(output), \
      contextlib.redirect_stderr(output):
    absl_logging.get_absl_handler().python_handler.stream = output   # is sys.stderr now
    sys.argv = argv
    try:
      try:
        importlib.import_module(module)
        code = _run_as_main(module)
      except SystemExit as exit_:   # flag errors at import end here (cli._fatal) too
        code = exit_.code
    finally:
      sys.argv = saved_argv
      FLAGS.unparse_flags()
      _forget_commands()
  return (0 if code is None else code), output.getvalue()


def _run_as_main(module: str):
  """What the last `if __name__ == '__main__': cli.run(main, ...)` of `module` does (an
  earlier one, as in experiments/main.py, hands several processes to the supervisor)."""
  source = sys.modules[module]
  text = open(source.__file__).read()
  call = text[text.rindex("if __name__ == '__main__':"):].split(':', 1)[1].strip()
  assert call.startswith('cli.run(main'), (module, call)
  app._run_init.done = False   # pylint: disable=protected-access  (parse this argv afresh)
  app._register_and_parse_flags_with_usage.done = False   # pylint: disable=protected-access
  exec(call, source.__dict__)   # pylint: disable=exec-used
  return 0
