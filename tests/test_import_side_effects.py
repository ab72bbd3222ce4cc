"""Importing irevnet_jax leaves the process as it was: no exception hook, logging filter or
handler, or environment variable of the importer's changes (console policy belongs to
experiments/). The libraries it uses are imported before the first snapshot."""
import json
import subprocess
import sys

import train_testlib as lib

_SNAPSHOT_AND_IMPORT = r'''
import json, logging, os, pkgutil, sys, threading, importlib

def snapshot():
  from absl import logging as absl_logging
  loggers = {name: [repr(f) for f in logging.getLogger(name).filters]
             for name in ('', 'absl', 'asyncio', 'jax', 'orbax')}
  handlers = {repr(h): [repr(f) for f in h.filters]
              for h in [absl_logging.get_absl_handler(), *logging.getLogger().handlers]}
  return {'excepthook': repr(sys.excepthook), 'unraisablehook': repr(sys.unraisablehook),
          'threading.excepthook': repr(threading.excepthook), 'loggers': loggers,
          'handlers': handlers, 'environ': dict(os.environ)}

# The libraries first: what they do at import (Orbax logs through absl, which then calls
# logging.basicConfig) is theirs; what follows is this package's.
for library in ('jax', 'flax.linen', 'optax', 'orbax.checkpoint', 'etils.epath', 'ml_collections',
                'tensorboardX', 'sklearn.linear_model', 'matplotlib.pyplot', 'tensorflow',
                'tensorflow_datasets', 'array_record.python.array_record_data_source'):
  importlib.import_module(library)
before = snapshot()
import irevnet_jax
names = [m.name for m in pkgutil.walk_packages(irevnet_jax.__path__, 'irevnet_jax.')]
for name in names:
  importlib.import_module(name)
print(json.dumps({'before': before, 'after': snapshot(), 'modules': names}))
'''


def test_importing_every_module_changes_no_process_wide_state():
  env = lib.env_with_devices(1)
  result = subprocess.run([sys.executable, '-c', _SNAPSHOT_AND_IMPORT], cwd=lib.REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert len(report['modules']) > 40 and 'irevnet_jax.run.orbax_logs' in report['modules']
  before, after = report['before'], report['after']
  for key in ('excepthook', 'unraisablehook', 'threading.excepthook', 'loggers', 'handlers'):
    assert after[key] == before[key], key
  changed = {k for k in set(before['environ']) | set(after['environ'])
             if before['environ'].get(k) != after['environ'].get(k)}
  assert not changed, changed
