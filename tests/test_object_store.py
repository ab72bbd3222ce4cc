"""Run directories on an object store (gs:// on the suite's GCS emulator) through the code
path users run: the back end with TensorFlow installed, refusals in one line before anything
is created, a console without the storage libraries' chatter, and the commands that read
or write a run (import_weights, analyze) on gs://."""
import http.server
import json
import os
import subprocess
import sys
import threading
import time

from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
import pytest

from irevnet_jax.run import checkpoints, metrics, paths
import in_process
import train_testlib as lib


def test_gs_run_io_takes_fsspec_whatever_is_installed(gcs, monkeypatch, tmp_path):
  """With TensorFlow importable and no EPATH_USE_TF, etils would send gs:// to tf.io.gfile;
  the command's own run directory I/O must not go there (every call of it fails here)."""
  import importlib.util
  assert importlib.util.find_spec('tensorflow') is not None, 'the test extra installs TF'
  monkeypatch.delenv('EPATH_USE_TF', raising=False)
  # Not a lease test: a lease long enough that a loaded machine's slow renewals do not end
  # the in-process run (the gcs fixture's 3 s lost it once in CI's load).
  monkeypatch.setenv('IREVNET_LEASE_SECONDS', '60')
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  assert paths.backend_of(f'{gcs}/x') is epath_backend.tf_backend   # etils' default here

  def refuse(*args, **kwargs):
    raise AssertionError(f'gs:// run I/O went through tf.io.gfile: {args}')
  for name in ('open', 'exists', 'isdir', 'listdir', 'glob', 'walk', 'makedirs', 'mkdir',
               'rmtree', 'remove', 'rename', 'replace', 'copy', 'stat'):
    monkeypatch.setattr(type(epath_backend.tf_backend), name, refuse, raising=False)
  workdir = f'{gcs}/runs/no_gfile'
  code, output = in_process.command('experiments.main', *lib.flag_args(num_train_steps=8),
                                    f'--workdir={workdir}', '--compilation_cache')
  assert code == 0, output[-3000:]
  assert paths.backend_of(workdir) is epath_backend.fsspec_backend
  assert [r['step'] for r in metrics.read_jsonl(workdir) if 'train/loss' in r] == [8]
  _, _, step = checkpoints.load_run(workdir)
  assert step == 8


class _Refusing(http.server.BaseHTTPRequestHandler):
  """A store that answers every request 401, as GCS does without credentials."""

  def do_GET(self):  # pylint: disable=invalid-name
    self.send_response(401)
    self.end_headers()
    self.wfile.write(b'{"error": {"code": 401, "message": "Anonymous caller"}}')

  def log_message(self, *args):
    del args


def _without_credentials():
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Refusing)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server, f'http://127.0.0.1:{server.server_address[1]}'


def _run_in(cwd, args, env):
  started = time.monotonic()
  result = subprocess.run([sys.executable, '-m', 'experiments.main', *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)
  return result, time.monotonic() - started


@pytest.mark.processes   # store faults, a process a case: a step of .ci/run of its own
@pytest.mark.parametrize('case', ['no_bucket', 'no_network', 'no_credentials'])
def test_an_unusable_gs_workdir_is_one_line_within_30_s_creating_nothing(gcs, tmp_path, case):
  env = lib.env_with_devices(1)
  server = None
  if case == 'no_network':     # nothing listens on the store's address
    env['STORAGE_EMULATOR_HOST'] = env['TENSORSTORE_GCS_HTTP_URL'] = (
        f'http://127.0.0.1:{lib.free_port()}')
  elif case == 'no_credentials':
    server, url = _without_credentials()
    env['STORAGE_EMULATOR_HOST'] = env['TENSORSTORE_GCS_HTTP_URL'] = url
  bucket = 'no-such-bucket' if case == 'no_bucket' else 'runs'
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  try:
    result, seconds = _run_in(cwd, lib.flag_args() + [f'--workdir=gs://{bucket}/runs/x'], env)
  finally:
    if server is not None:
      server.shutdown()
  lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
  assert result.returncode == 1 and len(lines) == 1, lines
  expected = {'no_bucket': 'Bucket gs://no-such-bucket does not exist',
              'no_network': 'Cannot reach gs://runs',
              'no_credentials': 'No access to gs://runs (HTTP 401'}[case]
  assert lines[0].startswith(f'Error: {expected}'), lines[0]
  assert seconds < 30, seconds
  assert os.listdir(cwd) == []                                     # nothing created locally
  assert not epath.Path(f'{gcs}/runs/x').exists()                  # nor in the store


@pytest.mark.processes   # a training process on the store: a step of .ci/run of its own
def test_a_gs_console_shows_this_projects_lines_only(gcs, tmp_path):
  """The storage libraries' notes (gcsfs's bucket-type fallback, its experimental-features
  note, fsspec's read-ahead cache) stay off a gs:// run's console, as Orbax's do."""
  result, _ = _run_in(lib.REPO, lib.flag_args(num_train_steps=8) +
                      [f'--workdir={gcs}/runs/console'], lib.env_with_devices(4))
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-3000:]
  for chatter in ('Could not determine bucket type', 'AdaptiveReadaheadCache',
                  'experimental features', 'falling back to GCSFileSystem'):
    assert chatter not in output, output
  assert 'step 8/8' in output and 'Done: step 8 of 8' in output


def test_import_weights_and_analyze_take_a_gs_workdir(gcs, tmp_path, monkeypatch):
  """The authors' file imported into gs://, refused a second time, and analysed there; nothing
  lands in the working directory."""
  from authors_fixture import NPZ
  from irevnet_jax.interop import runs
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('IREVNET_LEASE_SECONDS', '60')    # not a lease test (see above)
  workdir = f'{gcs}/runs/imported'
  config = os.path.join(lib.REPO, 'tests', 'authors_tiny_config.py')
  import_args = [f'--config={config}', f'--weights={NPZ}', f'--workdir={workdir}']
  code, output = in_process.command('experiments.import_weights', *import_args)
  assert code == 0, output[-3000:]
  assert runs.checkpoint_steps(workdir) == [0]
  assert runs.read_import_record(workdir)['step'] == 0
  code, output = in_process.command('experiments.import_weights', *import_args)
  assert code == 1 and 'already holds checkpoints (steps [0])' in output, output[-2000:]
  code, output = in_process.command(
      'experiments.analyze', f'--workdir={workdir}', '--batch_size=16', '--num_images=4',
      '--num_pairs=2', '--num_steps=3', '--max_contraction_examples=12')
  assert code == 0, output[-3000:]
  analysis = epath.Path(workdir, 'analysis')
  assert {'report.md', 'report.json', 'reconstruction.png', 'pca.png'} <= {
      p.name for p in analysis.iterdir()}
  report = json.loads((analysis / 'report.json').read_text())
  assert report['run']['step'] == 0 and report['reconstruction']['rel_l2_error'] < 1e-6
  assert os.listdir(tmp_path) == []
