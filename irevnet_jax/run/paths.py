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
"""
import os

from etils import epath


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
  """The fsspec filesystem epath uses for `url` (a `gcsfs.GCSFileSystem` for gs://)."""
  use_fsspec_for_urls()
  from etils.epath import backend  # pylint: disable=g-import-not-at-top
  return backend.fsspec_backend.fs(url)


def refresh(path):
  """Forgets this process's cached listings under `path` (fsspec caches them per
  process), so that a reader of a run another process writes sees its newest files.
  A no-op for local paths."""
  if is_url(path):
    filesystem(os.fspath(path)).invalidate_cache()


def resolve(workdir) -> str:
  """A URL as it is (and epath's URL back end fixed, `use_fsspec_for_urls`); a local path
  made absolute (with `~` expanded)."""
  workdir = os.fspath(workdir)
  if is_url(workdir):
    use_fsspec_for_urls()
    return workdir
  return os.path.abspath(os.path.expanduser(workdir))


def join(workdir, *names) -> str:
  """`workdir/names...` as a string, for local paths and URLs alike."""
  return os.fspath(epath.Path(workdir).joinpath(*names))


def write_file(workdir: str, name: str, text: str):
  """Writes `<workdir>/<name>`: atomically on a local disk (a temporary file renamed);
  an object store replaces the object whole."""
  if is_url(workdir):
    epath.Path(join(workdir, name)).write_text(text)
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, name)
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)
