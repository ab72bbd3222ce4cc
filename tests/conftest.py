"""Shared test setup: four CPU devices for pmap tests, one compilation cache per suite run
(every program, shared with the subprocesses), the session's tiny run, and a float64 fixture."""
import atexit
import os
import shutil
import tempfile

# Must happen before JAX initialises its backends: pmap tests need several devices.
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One persistent compilation cache for this run of the suite, in this process and in the
# commands the tests start (they inherit the variable): a program that several tests or
# subprocesses compile is compiled once. A fresh directory, so nothing from older code
# is reused; removed at exit.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='irevnet_jax_test_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
# Every program goes into that cache, not only those that took JAX's default 1 s to compile:
# the tiny runs that tests and subprocesses train again and again compile ~7 programs, most
# under a second each (measured: 2.2 s -> 0.4 s of compiling for a repeated tiny run).
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import jax  # noqa: E402
import pytest  # noqa: E402

# As the commands do: asyncio's 'never retrieved' tracebacks of Orbax tasks in checkpoints a
# test has made unusable (reported in one line) stay out of the suite's output.
import logging  # noqa: E402
from irevnet_jax.run import orbax_logs  # noqa: E402
logging.getLogger('asyncio').addFilter(orbax_logs.REPORTED_FAILURES)


@pytest.fixture
def x64():
  """Runs the test with 64-bit floats enabled (jax_enable_x64), then restores the default."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
  """(workdir, Result) of the tiny digits run (train_testlib.make_config(): dropout on, 24
  steps, 4 devices) from step 0 to the end in one go: the reference that interrupted,
  resumed and multi-process runs must reproduce. Made once per test session."""
  from irevnet_jax import train
  import train_testlib as lib
  workdir = tmp_path_factory.mktemp('tiny_run')
  return workdir, train.train_and_evaluate(lib.make_config(), str(workdir))


@pytest.fixture
def gcs(monkeypatch):
  """'gs://<bucket>' on a GCS emulator on localhost (tests/gcs_emulator.py); this process and
  the commands it starts are pointed at it with the emulator's standard variables only
  (TensorFlow stays installed: run directories must not need EPATH_USE_TF). Leases last 3 s."""
  import gcs_emulator
  from irevnet_jax.run import paths
  emulator = gcs_emulator.Emulator()
  for key, value in emulator.env.items():
    monkeypatch.setenv(key, value)
  monkeypatch.setenv('IREVNET_LEASE_SECONDS', '3')
  monkeypatch.delenv('EPATH_USE_TF', raising=False)
  paths.use_fsspec_for_urls()    # what resolving a run's URL does; this test reads URLs too
  yield f'gs://{gcs_emulator.BUCKET}'
  emulator.stop()
