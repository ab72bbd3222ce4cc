"""Shared test setup: four CPU devices for pmap tests, and a float64 fixture."""
import os

# Must happen before JAX initialises its backends: pmap tests need several devices.
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
  """Runs the test with 64-bit floats enabled (jax_enable_x64), then restores the default."""
  with jax.enable_x64(True):
    yield
