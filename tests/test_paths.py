"""run/paths.py's reads, writes and look-ups of a run's small files when the store fails:
transient errors are retried and end in one StoreUnavailable line, a missing file is None
or 'missing' and never confused with an unreachable store; locally, writes are atomic.
(The same calls through real injected faults: tests/test_faults.py.)"""
import functools
import os

import pytest

from irevnet_jax.errors import UserError
from irevnet_jax.run import metrics, paths, run_config, store_errors
from irevnet_jax.run import workdir as workdir_lib

URL = 'gs://bucket/run'


class FlakyStore:
  """A gcsfs stand-in: each method fails with `error` for its first `failures` calls."""

  def __init__(self, error, failures):
    self.error, self.failures, self.calls = error, failures, 0
    self.objects = {}

  def _maybe_fail(self):
    self.calls += 1
    if self.calls <= self.failures:
      raise self.error

  def pipe_file(self, path, data):
    self._maybe_fail()
    self.objects[path.split('://', 1)[1]] = data

  def cat_file(self, path):
    self._maybe_fail()
    key = path.split('://', 1)[1]
    if key not in self.objects:
      raise FileNotFoundError(path)
    return self.objects[key]

  def info(self, path):
    self._maybe_fail()
    key = path.split('://', 1)[1]
    if key in self.objects:
      return {'type': 'file'}
    if any(k.startswith(key + '/') for k in self.objects):
      return {'type': 'directory'}
    raise FileNotFoundError(path)

  def ls(self, path, detail, refresh):
    del detail, refresh
    self._maybe_fail()
    key = path.split('://', 1)[1]
    return sorted({key + '/' + k[len(key) + 1:].split('/')[0] for k in self.objects
                   if k.startswith(key + '/')})

  def find(self, path, withdirs):
    del withdirs
    self._maybe_fail()
    key = path.split('://', 1)[1]
    return sorted(k for k in self.objects if k.startswith(key + '/'))


class HttpError(Exception):
  """What gcsfs raises when its own retries of an HTTP 503 run out."""
  code = 503


@pytest.fixture
def store(monkeypatch):
  """Installs a FlakyStore for gs:// (failing as the test sets) and records retry pauses."""
  pauses = []
  monkeypatch.setattr(store_errors, 'retry', functools.partial(store_errors.retry,
                                                               sleep=pauses.append))
  fake = FlakyStore(HttpError('Service Unavailable, 503'), 0)
  monkeypatch.setattr(paths, 'filesystem', lambda url: fake)
  monkeypatch.setattr(paths, 'check_reachable', lambda url: None)   # no bucket probe
  fake.pauses = pauses
  return fake


def test_object_store_calls_are_retried_through_transient_errors(store):
  store.objects = {'bucket/run/config.json': b'{}', 'bucket/run/sub/a': b'1'}
  for error in (HttpError('Service Unavailable, 503'), ConnectionResetError('reset by peer'),
                TimeoutError('timed out')):
    for call, want in ((lambda: paths.read_bytes(f'{URL}/config.json'), b'{}'),
                       (lambda: paths.read_text(f'{URL}/missing'), None),
                       (lambda: paths.kind(URL), 'directory'),
                       (lambda: paths.kind(f'{URL}/config.json'), 'file'),
                       (lambda: paths.kind(f'{URL}/missing'), 'missing'),
                       (lambda: paths.list_names(URL), ['config.json', 'sub']),
                       (lambda: paths.files_under(URL), ['config.json', 'sub/a'])):
      store.error, store.failures, store.calls = error, 2, 0
      assert call() == want
      assert store.calls == 3
  store.failures, store.calls = 2, 0
  paths.write_bytes(f'{URL}/metrics.jsonl', b'{"step": 1}\n')
  assert store.objects['bucket/run/metrics.jsonl'] == b'{"step": 1}\n' and store.calls == 3


def test_an_unreachable_store_is_one_line_never_a_missing_file(store):
  store.failures = 10**6
  for call in (lambda: paths.kind(URL), lambda: paths.read_bytes(f'{URL}/config.json'),
               lambda: paths.write_file(URL, 'config.json', '{}'),
               lambda: workdir_lib.state(URL), lambda: metrics.read_jsonl(URL),
               lambda: run_config.read_config(URL)):
    store.calls = 0
    with pytest.raises(store_errors.StoreUnavailable) as raised:
      call()
    message = str(raised.value)
    assert '\n' not in message and 'failed 6 times' in message and URL in message, message
    assert store.calls == 6
  assert store.objects == {}
  store.calls = 0    # a retry around a call that retries does not multiply the tries
  with pytest.raises(store_errors.StoreUnavailable, match='Looking up'):
    store_errors.retry(lambda: paths.kind(URL), 'Checking the run')
  assert store.calls == 6


def test_other_store_errors_are_not_retried(store):
  store.error, store.failures = PermissionError('Forbidden: bucket/run'), 1
  with pytest.raises(PermissionError):
    paths.kind(URL)
  assert store.calls == 1 and not store.pauses


def test_a_read_or_write_that_fails_for_good_is_one_user_error_naming_the_cause(store, tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  with pytest.raises(paths.AccessError, match=r'a_file/run/config.json \(Not a directory\); '
                                              'free space') as error:
    paths.write_bytes(str(a_file / 'run' / 'config.json'), b'{}')
  assert isinstance(error.value, UserError) and isinstance(error.value, OSError)
  assert isinstance(error.value.__cause__, NotADirectoryError)
  store.error, store.failures = PermissionError('Forbidden: bucket/run'), 1
  with pytest.raises(paths.AccessError, match='Cannot write .*config.json \\(PermissionError: '
                                              'Forbidden'):
    paths.write_bytes(URL + '/config.json', b'{}')
  store.failures = 2
  with pytest.raises(paths.AccessError, match='Cannot read .*config.json \\(PermissionError: '
                                              'Forbidden'):
    paths.read_text(URL + '/config.json')
  assert store.calls == 2   # neither retried


def test_dropped_connections_of_http_clients_are_transient():
  import http.client
  import requests
  for error in (http.client.IncompleteRead(b'{"na', 20), requests.exceptions.ProxyError(),
                requests.exceptions.ReadTimeout(), requests.exceptions.ChunkedEncodingError()):
    assert store_errors.is_transient(error) and not store_errors.is_corruption(error), error
  assert not store_errors.is_transient(store_errors.StoreUnavailable('gave up'))


def test_local_writes_are_atomic_and_reads_of_missing_files_none(tmp_path):
  path = str(tmp_path / 'new' / 'folder' / 'file.json')
  assert paths.read_bytes(path) is None and paths.kind(path) == 'missing'
  paths.write_bytes(path, b'one')
  paths.write_bytes(path, b'two')
  assert paths.read_text(path) == 'two' and paths.kind(path) == 'file'
  assert os.listdir(os.path.dirname(path)) == ['file.json']     # no temporary left
  assert paths.files_under(str(tmp_path)) == ['new/folder/file.json']
  assert paths.list_names(str(tmp_path / 'new')) == ['folder']
  assert paths.files_under(str(tmp_path / 'none')) == [] == paths.list_names(path + 'x')


def test_a_local_write_that_fails_midway_changes_nothing(tmp_path):
  path = str(tmp_path / 'report.json')
  paths.write_bytes(path, b'old')

  def half_then_fail(f):
    f.write(b'{"half": ')
    raise RuntimeError('serializer failed')
  for target in (path, str(tmp_path / 'new.png')):
    with pytest.raises(RuntimeError, match='serializer failed'):
      paths.write_local(target, half_then_fail)
  assert paths.read_text(path) == 'old' and os.listdir(tmp_path) == ['report.json']
