"""A run's files wherever they live: a local path or a URL of any filesystem that
`etils.epath` (what Orbax uses) reads, e.g. `gs://bucket/runs/x`, `s3://...`.

URLs are never made absolute; a file written locally is written atomically (a temporary
file renamed), an object store replaces the object whole.
"""
import os

from etils import epath


def is_url(path) -> bool:
  """True for `scheme://...` paths (object stores), False for local ones."""
  return '://' in os.fspath(path)


def resolve(workdir) -> str:
  """A URL as it is; a local path made absolute (with `~` expanded)."""
  workdir = os.fspath(workdir)
  return workdir if is_url(workdir) else os.path.abspath(os.path.expanduser(workdir))


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
