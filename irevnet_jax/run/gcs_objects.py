"""One object on Google Cloud Storage, replaced or deleted only if it is still the version the
caller saw: the JSON API's generation preconditions, sent through the gcsfs session that
reads and writes the run directory (`paths.filesystem`).

    found, now = read(url)                                  # (Stored or None, the store's time)
    mine = write(url, data, if_generation=0)                # create, only if absent
    mine = write(url, data, if_generation=found.generation)  # replace that version only
    delete(url, if_generation=mine.generation)

A failed precondition (HTTP 412) raises `GenerationMismatch`. Times are the store's: an
object's `updated`, and the `Date` of the store's answer for "now"; never this machine's clock.
Uploads are multipart: fake-gcs-server (the suite's emulator) honours `ifGenerationMatch` on
them, though not on media uploads nor on deletes; GCS honours it on all three.

Each call is one request (`_request`, where tests inject faults), cut off after `timeout`
seconds; retrying transient errors is the caller's choice (`store_errors.retry`).
"""
import datetime
import email.utils
import json
from urllib.parse import quote
from typing import NamedTuple, Optional, Tuple

from irevnet_jax.run import paths

BOUNDARY = 'irevnet-jax-object'


class Stored(NamedTuple):
  data: bytes
  generation: int
  updated: float     # when this version was written, the store's time (seconds since the epoch)


class GenerationMismatch(FileExistsError):
  """The object is not at the generation a conditional write or delete required (HTTP 412)."""


def _request(fs, method: str, path: str, *args, timeout: float, **params):
  """(headers, body) of one JSON-API request through `fs` (gcsfs), cut off after `timeout` s.
  gcsfs raises FileNotFoundError for a 404 and FileExistsError for a 412."""
  return fs.call(method, path, *args, timeout=timeout, **params)


def _where(url: str):
  fs = paths.filesystem(url)
  bucket, key, _ = fs.split_path(url)
  return fs, bucket, key


def _seconds(rfc3339: str) -> float:
  return datetime.datetime.fromisoformat(rfc3339.replace('Z', '+00:00')).timestamp()


def read(url: str, timeout: float = 30.0) -> Tuple[Optional[Stored], Optional[float]]:
  """(the object's current version or None if there is none, the store's time now: the `Date`
  of its answer, whole seconds rounded down, None when the object is missing)."""
  fs, bucket, key = _where(url)
  for _ in range(3):
    try:
      headers, body = _request(fs, 'GET', 'b/{}/o/{}', bucket, key, timeout=timeout)
    except FileNotFoundError:
      return None, None
    now = email.utils.parsedate_to_datetime(headers['Date']).timestamp()
    meta = json.loads(body)
    generation = int(meta['generation'])
    try:
      _, data = _request(fs, 'GET', 'b/{}/o/{}', bucket, key, alt='media',
                         generation=generation, timeout=timeout)
    except FileNotFoundError:
      continue      # replaced or deleted between the two requests: look again
    return Stored(data, generation, _seconds(meta['updated'])), now
  raise GenerationMismatch(f'{url} changed during every one of 3 reads')


def write(url: str, data: bytes, if_generation: int, timeout: float = 30.0,
          content_type: str = 'application/json') -> Stored:
  """Writes `data` to `url` if the object is at `if_generation` (0: only if it does not
  exist); the version written. GenerationMismatch otherwise."""
  fs, bucket, key = _where(url)
  body = b''.join([
      f'--{BOUNDARY}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n'.encode(),
      json.dumps({'name': key, 'contentType': content_type}).encode(),
      f'\r\n--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n'.encode(),
      data, f'\r\n--{BOUNDARY}--\r\n'.encode()])
  location = fs._location  # pylint: disable=protected-access
  try:
    _, answer = _request(
        fs, 'POST', f'{location}/upload/storage/v1/b/{quote(bucket)}/o',
        uploadType='multipart', ifGenerationMatch=str(int(if_generation)), data=body,
        headers={'Content-Type': f'multipart/related; boundary={BOUNDARY}'}, timeout=timeout)
  except FileExistsError as error:
    raise GenerationMismatch(f'{url} is not at generation {if_generation}') from error
  fs.invalidate_cache(url)
  meta = json.loads(answer)
  return Stored(data, int(meta['generation']), _seconds(meta['updated']))


def delete(url: str, if_generation: int, timeout: float = 30.0):
  """Deletes `url` if it is at `if_generation`; GenerationMismatch if it is at another, nothing
  if it is gone."""
  fs, bucket, key = _where(url)
  try:
    _request(fs, 'DELETE', 'b/{}/o/{}', bucket, key, ifGenerationMatch=str(int(if_generation)),
             timeout=timeout)
  except FileNotFoundError:
    pass
  except FileExistsError as error:
    raise GenerationMismatch(f'{url} is not at generation {if_generation}') from error
  fs.invalidate_cache(url)
