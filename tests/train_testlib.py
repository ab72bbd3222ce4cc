"""Shared helpers of the training tests: tiny digits configs, subprocess runs, comparisons."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from experiments.configs import digits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_CONFIG = os.path.join(REPO, 'experiments', 'configs', 'digits.py')
HELPER = os.path.join(REPO, 'tests', 'train_helper.py')

# A tiny, fast digits run (dropout on, to check that resumed runs replay its masks):
# one block per stage, 24 steps at a constant rate, a checkpoint every 8.
TINY = {
    'model.blocks': (1, 1, 1), 'batch_size': 32, 'eval_batch_size': 128,
    'num_train_steps': 24, 'learning_rate': 0.2, 'lr_schedule': 'step', 'warmup_epochs': 0.0,
    'log_every_steps': 8, 'eval_every_steps': 0, 'checkpoint_every_steps': 8,
    'num_devices': 0,
}
# Compiled programs are shared by the subprocesses of one test session.
COMPILATION_CACHE = (os.environ.get('JAX_COMPILATION_CACHE_DIR')   # conftest's, one a suite
                     or tempfile.mkdtemp(prefix='irevnet_jax_test_xla_cache_'))


def make_config(**overrides):
  """digits.get_config() with TINY and then `overrides` applied ('a.b' keys as a__b)."""
  config = digits.get_config()
  for key, value in {**TINY, **{k.replace('__', '.'): v for k, v in overrides.items()}}.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def flag_args(**overrides):
  """The experiments.main flags that give `make_config(**overrides)`."""
  def text(value):
    if isinstance(value, tuple):
      return '(' + ','.join(map(str, value)) + (',)' if len(value) == 1 else ')')
    return str(value)
  merged = {**TINY, **{k.replace('__', '.'): v for k, v in overrides.items()}}
  return [f'--config={DIGITS_CONFIG}'] + [f'--config.{k}={text(v)}' for k, v in merged.items()]


def copy_of_run(run, tmp_path):
  """A copy of a finished run's workdir (e.g. conftest's `tiny_run`, step 24 of 24): what
  training `make_config()` into tmp_path / 'run' would leave, without training."""
  workdir = os.path.join(str(tmp_path), 'run')
  shutil.copytree(run[0], workdir)
  return workdir


def env_with_devices(num_devices):
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={num_devices}'])
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  env['JAX_COMPILATION_CACHE_DIR'] = COMPILATION_CACHE
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


def start(args, num_devices=4, script=None):
  """Starts `python <script or -m experiments.main> args` with `num_devices` CPU devices."""
  command = [sys.executable] + ([script] if script else ['-m', 'experiments.main']) + args
  return subprocess.Popen(command, cwd=REPO, env=env_with_devices(num_devices),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def start_processes(workdir, extra=(), per_process=((), ()), script=None):
  """Starts the processes of one multi-process job on `workdir` (one per entry of
  `per_process`, its own extra flags), 2 CPU devices each, with a fresh coordinator port."""
  port = free_port()
  return [start(flag_args() + [f'--workdir={workdir}', f'--coordinator_address=localhost:{port}',
                               f'--num_processes={len(per_process)}', f'--process_id={index}',
                               *extra, *own],
                num_devices=2, script=script)
          for index, own in enumerate(per_process)]


def finish(process, timeout=240):
  """Waits for `process`; returns (returncode, output). Kills it on timeout."""
  try:
    output, _ = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    output, _ = process.communicate()
    raise AssertionError(f'subprocess timed out after {timeout}s:\n{output[-4000:]}')
  return process.returncode, output


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def wait_for_lease_to_expire():
  """Sleeps until a killed run's gs:// lease is stale: its lease ($IREVNET_LEASE_SECONDS) plus
  1.5 s, as the store's time is its answers' `Date`, whole seconds behind by up to 1 s."""
  time.sleep(float(os.environ['IREVNET_LEASE_SECONDS']) + 1.5)
