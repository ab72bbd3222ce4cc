"""Where the analyses write: a local folder, or a URL (`gs://...`) written through a
local temporary folder whose files are uploaded at the end."""
import contextlib
import os
import tempfile

from etils import epath

from irevnet_jax.run import paths


def default_dir(workdir: str, out_dir: str = None) -> str:
  """`out_dir`, or `<workdir>/analysis` (a URL stays a URL)."""
  return out_dir or paths.join(paths.resolve(workdir), 'analysis')


@contextlib.contextmanager
def local_dir(out_dir: str):
  """Yields a local folder to write into; for a URL, a temporary one whose files are
  copied to `out_dir` when the block ends without an error."""
  if not paths.is_url(out_dir):
    try:
      os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
      raise paths.cannot_write(out_dir, error) from error
    yield out_dir
    return
  paths.use_fsspec_for_urls()
  with tempfile.TemporaryDirectory(prefix='irevnet_analysis_') as tmp:
    yield tmp
    epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(tmp)):   # each object replaced whole, uploads retried
      paths.write_bytes(paths.join(out_dir, name), paths.read_bytes(os.path.join(tmp, name)))
