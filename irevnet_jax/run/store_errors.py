"""What a failed read or write of a run's files means: the store was unreachable for a
while (`is_transient`: retry, then stop and keep everything) or the data is bad
(`is_corruption`: only then may a checkpoint be set aside).

Errors come from several layers: gcsfs/aiohttp (`ClientError`, `HttpError` with an HTTP
code), the OS (`ConnectionResetError`, `TimeoutError`), TensorStore (a `ValueError` whose
text starts with an absl status code: `UNAVAILABLE: ...`, `DATA_LOSS: ...`) and Orbax,
which wraps them; the whole chain (`__cause__`, `__context__`) is read.
"""
import random
import time
from typing import Callable, Iterator, TypeVar

from irevnet_jax.errors import UserError

T = TypeVar('T')

TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_STATUS = ('UNAVAILABLE', 'DEADLINE_EXCEEDED', 'RESOURCE_EXHAUSTED', 'ABORTED',
                    'CANCELLED')
CORRUPT_STATUS = ('DATA_LOSS', 'NOT_FOUND', 'OUT_OF_RANGE')
# Dropped connections and timeouts as HTTP client libraries raise them (matched with the
# error's base classes): a body cut short (urllib's `IncompleteRead`), requests' connection,
# proxy (HTTP 502 in gcsfs) and timeout errors, urllib3's protocol errors.
TRANSIENT_LIBRARY_ERRORS = frozenset({
    ('http.client', 'IncompleteRead'),
    ('requests.exceptions', 'ConnectionError'), ('requests.exceptions', 'Timeout'),
    ('requests.exceptions', 'ChunkedEncodingError'),
    ('urllib3.exceptions', 'ProtocolError'), ('urllib3.exceptions', 'TimeoutError'),
})


class StoreUnavailable(UserError, OSError):
  """The run directory's store could not be reached for long enough to give up; nothing
  was changed (every checkpoint and metrics line is where it was)."""


def chain(error: BaseException) -> Iterator[BaseException]:
  """`error` and the errors it was raised from, innermost last (no cycles)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _status(error: BaseException) -> str:
  text = str(error).lstrip()
  return text.split(':', 1)[0] if ':' in text[:40] else ''


def _http_code(error: BaseException):
  for name in ('code', 'status'):
    code = getattr(error, name, None)
    if isinstance(code, int) and 100 <= code < 600:
      return code
  return None


def _is_library_transient(error: BaseException) -> bool:
  return any((cls.__module__, cls.__name__) in TRANSIENT_LIBRARY_ERRORS
             for cls in type(error).__mro__)


def is_transient(error: BaseException) -> bool:
  """True when `error` (or one it came from) says the store was unreachable, slow or busy:
  a dropped or refused connection, a body cut short, a timeout, an HTTP 408/429/5xx, a
  TensorStore UNAVAILABLE or DEADLINE_EXCEEDED. Retrying may succeed; the data is not in
  question. Not for `StoreUnavailable`: retries already ran out (a retry around calls that
  retry would multiply the tries)."""
  if isinstance(error, StoreUnavailable):
    return False
  for link in chain(error):
    if isinstance(link, (ConnectionError, TimeoutError)) or _is_library_transient(link):
      return True
    if type(link).__module__.startswith('aiohttp') and not _http_code(link):
      return True     # aiohttp's ClientConnectionError, ServerDisconnectedError, ...
    if _http_code(link) in TRANSIENT_HTTP and 'Error' in type(link).__name__:
      return True
    if _status(link) in TRANSIENT_STATUS:
      return True
  return False


def is_corruption(error: BaseException) -> bool:
  """True when `error` is evidence that stored data is bad or incomplete: a missing file,
  an undecodable one, a TensorStore DATA_LOSS / NOT_FOUND, or the project's own
  `checksums.CorruptCheckpoint` (a CRC mismatch, non-finite values). Never for a
  transient error."""
  if is_transient(error):
    return False
  for link in chain(error):
    if getattr(link, 'is_corruption', False):    # checksums.CorruptCheckpoint
      return True
    if isinstance(link, (FileNotFoundError, EOFError, UnicodeDecodeError)):
      return True
    if type(link).__name__ in ('JSONDecodeError', 'ExtraData', 'UnpackValueError',
                               'FormatError', 'StackError'):
      return True     # json, msgpack
    if _status(link) in CORRUPT_STATUS:
      return True
    if _http_code(link) == 404:
      return True
  return False


def _wait(seconds: float):
  """The pause between tries (tests replace it to record the delays)."""
  time.sleep(seconds)


def retry(call: Callable[[], T], what: str, attempts: int = 6, first_delay: float = 0.5,
          max_delay: float = 16.0, sleep=None) -> T:
  """`call()`, retried with exponential backoff (and jitter) while it fails transiently;
  after `attempts` tries `StoreUnavailable` names `what` and the last error. Other errors
  are raised at once. `sleep(seconds)`: the pause (default `_wait`, looked up per call)."""
  sleep = sleep or _wait
  delay = first_delay
  for attempt in range(1, attempts + 1):
    try:
      return call()
    except Exception as error:  # pylint: disable=broad-except
      if not is_transient(error):
        raise
      if attempt == attempts:
        raise StoreUnavailable(
            f'{what} failed {attempts} times in a row, the store unreachable or busy '
            f'({short(error)}); nothing was changed: rerun the same command when the store '
            f'answers again.') from error
      sleep(delay * (1 + random.random() / 4))
      delay = min(delay * 2, max_delay)
  raise AssertionError('unreachable')


def short(error: BaseException, limit: int = 200) -> str:
  """`Type: first line of the message`, at most `limit` characters."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ''
  if len(text) > limit:
    text = text[:limit] + '...'
  return f'{type(error).__name__}: {text}'
