"""A run's files wherever they live: a local path or a URL of an object store, e.g.
`gs://bucket/runs/x`, read and written through `etils.epath` (what Orbax uses).

One back end for URLs, whatever is installed: `etils.epath` would send `gs://` to
TensorFlow's `tf.io.gfile` whenever TensorFlow is importable (always, with the TFDS
extra), and to fsspec (`gcsfs`) otherwise. The run directory's I/O must be the code the
suite tests on its GCS emulator, so the first URL a run resolves (`resolve`) switches
epath to its fsspec back end for the process (`EPATH_USE_TF=false`, etils' own switch),
before Orbax or anything else touches the URL. Array data goes through TensorStore either
way. Local paths are unaffected.

URLs are never made absolute; a file written locally is written atomically (a temporary
file renamed), an object store replaces the object whole.

A run's small files (config, metrics, TensorBoard events, records) are read, written and
looked up here (`read_bytes`, `write_bytes`, `kind`, `list_names`): on an object store each
is one request, which gcsfs retries while the store fails transiently (HTTP 408/429/5xx,
dropped connections: 6 tries over ~30 s); should those run out, the call is tried again
(`store_errors.retry`) and then ends in `StoreUnavailable`, one line, nothing half-written.
A missing file is None / 'missing', never mistaken for a store error, nor one for it.
"""
import functools
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import BinaryIO, Callable, List, Optional

from etils import epath

from irevnet_jax.errors import UserError
from irevnet_jax.run import store_errors

PROBE_TIMEOUT_SECONDS = 10


def is_url(path) -> bool:
  """True for `scheme://...` paths (object stores), False for local ones."""
  return '://' in os.fspath(path)


def use_fsspec_for_urls():
  """Makes `etils.epath` read and write URLs through fsspec (gcsfs for `gs://`) in this
  process, whether or not TensorFlow is installed (module docstring). Idempotent."""
  if os.environ.get('EPATH_USE_TF', '').lower() in ('false', 'no', 'f', '0'):
    return
  os.environ['EPATH_USE_TF'] = 'false'
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


def backend_of(path):
  """The `etils.epath` back end that reads and writes `path` (for tests and checks)."""
  return epath.Path(path)._backend  # pylint: disable=protected-access


def filesystem(url: str):
  """The fsspec filesystem epath uses for `url` (a `gcsfs.GCSFileSystem` for gs://), with
  its listings cache off: fsspec would otherwise answer from listings this process made
  earlier, blind to the objects TensorStore (Orbax's arrays) or another process wrote
  since (seen: an async save failing on 'Checkpoint directory does not exist')."""
  use_fsspec_for_urls()
  from etils.epath import backend  # pylint: disable=g-import-not-at-top
  try:
    fs = backend.fsspec_backend.fs(url)
  except ImportError as error:   # fsspec's: the scheme's file system package is missing
    raise UserError(f'{url} needs a file system package that is not installed ({error}): '
                    f'e.g. `pip install gcsfs` for gs://, or pass a local path.') from error
  if fs.dircache.use_listings_cache:
    fs.dircache.use_listings_cache = False
    fs.dircache.clear()
  return fs


def refresh(path):
  """Forgets any listing under `path` cached by this process, so that a reader of a run
  another process writes sees its newest files (`filesystem` turns fsspec's cache off;
  this also covers a filesystem made before). A no-op for local paths."""
  if is_url(path):
    filesystem(os.fspath(path)).invalidate_cache()


def resolve(workdir) -> str:
  """A URL as it is, once its store answers (`check_reachable`; epath's URL back end fixed,
  `use_fsspec_for_urls`); a local path made absolute (with `~` expanded)."""
  workdir = os.fspath(workdir)
  if is_url(workdir):
    use_fsspec_for_urls()
    check_reachable(workdir)
    return workdir
  return os.path.abspath(os.path.expanduser(workdir))


class StoreRefused(UserError, OSError):
  """The object store of a run directory cannot be used: no network, no credentials, or
  no such bucket. The message names the cause and the fix."""


def check_reachable(url: str):
  """Raises `StoreRefused` in one line, within ~20 s and before anything is created, unless
  the bucket of a `gs://` URL exists and answers with these credentials (one request,
  retried only while the store is busy or refuses connections). Other schemes are not
  probed. Remembered per bucket for the process."""
  if url.startswith('gs://'):
    bucket = url.split('/')[2]
    _probe_gcs_bucket(filesystem(url)._location, bucket)  # pylint: disable=protected-access


@functools.lru_cache(maxsize=None)
def _probe_gcs_bucket(endpoint: str, bucket: str):
  fs = filesystem(f'gs://{bucket}')
  where = f'gs://{bucket}'
  try:
    headers = {}
    fs.credentials.apply(headers)
  except Exception as error:  # pylint: disable=broad-except
    raise StoreRefused(
        f'No credentials for {where} ({store_errors.short(error)}); sign in with `gcloud auth '
        f'application-default login` or set GOOGLE_APPLICATION_CREDENTIALS.') from None
  request = urllib.request.Request(f'{endpoint}/storage/v1/b/{bucket}', headers=headers)

  def get():
    with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_SECONDS) as response:
      return json.loads(response.read() or b'{}')

  try:
    store_errors.retry(get, f'Reaching {where}', attempts=5, first_delay=0.5)
  except urllib.error.HTTPError as error:
    if error.code == 404:
      raise StoreRefused(
          f'Bucket {where} does not exist (at {endpoint}); create it (`gcloud storage buckets '
          f'create {where}`) or fix the bucket name in --workdir.') from None
    if error.code in (401, 403):
      raise StoreRefused(
          f'No access to {where} (HTTP {error.code} at {endpoint}); sign in with `gcloud auth '
          f'application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a key of an '
          f'account that may write the bucket.') from None
    raise StoreRefused(f'{where} answered HTTP {error.code} ({error.reason}) at {endpoint}; '
                       f'check the bucket and this machine\'s access to it.') from None
  except (OSError, store_errors.StoreUnavailable) as error:
    cause = error.__cause__ if isinstance(error, store_errors.StoreUnavailable) else error
    reason = getattr(cause, 'reason', cause)
    if isinstance(reason, socket.gaierror) or 'Name or service not known' in str(reason):
      reason = f'cannot resolve {urllib.parse.urlsplit(endpoint).hostname}: no network or DNS'
    raise StoreRefused(
        f'Cannot reach {where} at {endpoint} ({reason}); check this machine\'s network (for a '
        f'GCS emulator, STORAGE_EMULATOR_HOST), or pass a local --workdir.') from None


def join(workdir, *names) -> str:
  """`workdir/names...` as a string, for local paths and URLs alike."""
  return os.fspath(epath.Path(workdir).joinpath(*names))


def write_file(workdir: str, name: str, text: str):
  """Writes `<workdir>/<name>` (`write_bytes`)."""
  write_bytes(join(workdir, name), text.encode())


class AccessError(UserError, OSError):
  """A file that cannot be read or written for good: a full disk, no permission, a read-only
  file system. The message names the path and the cause."""


def cannot_write(path: str, error: OSError) -> AccessError:
  """The UserError for `error` of writing `path` (raise it `from error`)."""
  return AccessError(f'Cannot write {path} ({_cause(error)}); free space on its disk or fix '
                     f'its permissions, or write elsewhere.')


def cannot_read(path: str, error: OSError) -> AccessError:
  """The UserError for `error` of reading `path` (raise it `from error`)."""
  return AccessError(f'Cannot read {path} ({_cause(error)}); fix its permissions or pass '
                     f'another path.')


def _cause(error: OSError) -> str:
  return error.strerror or store_errors.short(error)


def write_bytes(path: str, data: bytes):
  """Replaces the file `path` with `data`: on a local disk atomically (a temporary file
  renamed, folders made), on an object store in one upload (retried, module docstring).
  `AccessError` when the disk is full or the path not writable."""
  path = os.fspath(path)
  try:
    if is_url(path):
      fs = filesystem(path)
      store_errors.retry(lambda: fs.pipe_file(path, bytes(data)), f'Writing {path}')
      return
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  except UserError:
    raise    # StoreUnavailable: the store was unreachable
  except OSError as error:
    raise cannot_write(path, error) from error
  write_local(path, lambda f: f.write(data))


def write_local(path: str, write: Callable[[BinaryIO], object]):
  """Replaces the local file `path` with what `write(binary file)` writes, atomically: into
  `<path>.tmp` in the same folder, renamed when complete; if `write` raises, the temporary
  file is removed and `path` is as it was (a command's output appears whole or not at all).
  `AccessError` when the disk is full or the folder not writable."""
  temporary = os.fspath(path) + '.tmp'
  try:
    with open(temporary, 'wb') as f:
      write(f)
    os.replace(temporary, path)
  except OSError as error:
    raise cannot_write(path, error) from error
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def read_bytes(path: str) -> Optional[bytes]:
  """The content of the file `path`, or None when there is none (on an object store one
  download, retried; module docstring); `AccessError` when it cannot be read."""
  path = os.fspath(path)
  try:
    if is_url(path):
      fs = filesystem(path)
      return store_errors.retry(lambda: fs.cat_file(path), f'Reading {path}')
    with open(path, 'rb') as f:
      return f.read()
  except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
    return None
  except UserError:
    raise    # StoreUnavailable: the store was unreachable
  except OSError as error:
    raise cannot_read(path, error) from error


def read_text(path: str) -> Optional[str]:
  """`read_bytes` decoded as UTF-8 (None when there is no such file)."""
  data = read_bytes(path)
  return None if data is None else data.decode()


def kind(path: str) -> str:
  """'file', 'directory' (on an object store: a prefix with objects under it, or a bucket)
  or 'missing'. A store that fails transiently is retried, then `StoreUnavailable`; never
  'missing' for an unreachable store (fsspec's `isdir` says False for any OSError)."""
  path = os.fspath(path)
  if not is_url(path):
    return ('directory' if os.path.isdir(path) else 'file' if os.path.exists(path)
            else 'missing')
  fs = filesystem(path)

  def look():
    try:
      return 'directory' if fs.info(path)['type'] == 'directory' else 'file'
    except FileNotFoundError:
      return 'missing'
  return store_errors.retry(look, f'Looking up {path}')


def list_names(path: str) -> List[str]:
  """The names of the files and folders directly in the folder `path` (none if missing),
  as the store has them now (no cached listing); retried like `kind`."""
  path = os.fspath(path)
  if not is_url(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []
  fs = filesystem(path)

  def names():
    try:
      entries = fs.ls(path, detail=False, refresh=True)
    except FileNotFoundError:
      return []
    return sorted({entry.rstrip('/').rsplit('/', 1)[-1] for entry in entries
                   if entry.rstrip('/') != path.split('://', 1)[-1].rstrip('/')})
  return store_errors.retry(names, f'Listing {path}')


def files_under(path: str) -> List[str]:
  """The paths, relative to the folder `path` ('/'-separated), of every file below it (none
  if it is missing); a listing that fails is an error, never a shorter list (fsspec's
  `walk` leaves out what it could not list). Retried like `kind`."""
  path = os.fspath(path)
  if not is_url(path):
    def fail(error):
      raise error
    if not os.path.isdir(path):
      return []
    return sorted(os.path.relpath(os.path.join(root, name), path).replace(os.sep, '/')
                  for root, _, names in os.walk(path, onerror=fail) for name in names)
  fs = filesystem(path)
  prefix = path.split('://', 1)[-1].rstrip('/') + '/'
  return store_errors.retry(
      lambda: sorted(key[len(prefix):] for key in fs.find(path, withdirs=False)
                     if key.startswith(prefix)), f'Listing {path}')
