"""A run's directory: checked before a run, one run at a time, the config it was trained with.

    <workdir>/config.json            the config of the run (`run_config`)
    <workdir>/config_history.jsonl   earlier configs, one per accepted change (`run_config`)
    <workdir>/.lock, .lease.json     who trains in it now (`workdir_lock`)
    <workdir>/checkpoints/, metrics.jsonl, ...   (`checkpoints`, `metrics`)

A workdir is a local path or a URL (`paths`: `gs://...`, never made absolute). This
module checks one before a run (`check_workdir`), says what it holds (`state`) and undoes
what a refused run made (`clean_up_refused`).
"""
import os

from etils import epath

from irevnet_jax.errors import UserError
from irevnet_jax.run import paths, store_errors
from irevnet_jax.run.workdir_lock import OWNER_FILES


def check_workdir(workdir: str) -> str:
  """The resolved path of `workdir` (a URL or an absolute local path), created if missing;
  a UserError naming the fix if it cannot be a run directory."""
  path = paths.resolve(workdir)
  if paths.kind(path) == 'file':
    raise UserError(f'--workdir={workdir} is a file, not a directory; pass a new '
                    f'or existing directory.')
  if paths.is_url(path):
    return path        # object stores have no folders: the run's first object makes it
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as error:
    raise UserError(f'Cannot create --workdir={workdir}: {error.strerror or error}.') from error
  if not os.access(path, os.W_OK):
    raise UserError(f'--workdir={workdir} is not writable.')
  return path


def state(workdir) -> str:
  """'missing', 'unused' (exists, holds nothing but lock files) or 'run'."""
  path = paths.resolve(workdir)
  if paths.kind(path) != 'directory':
    return 'missing'
  return 'run' if any(name not in OWNER_FILES for name in paths.list_names(path)) else 'unused'


def clean_up_refused(workdir: str, before: str):
  """Undoes what a refused run made in `workdir` (`before`: its `state` then) if it wrote
  nothing but lock files and empty folders: a folder it created goes, a folder that was
  there keeps only what it held."""
  if before == 'run' or paths.kind(workdir) != 'directory' or any(
      name.rsplit('/', 1)[-1] not in OWNER_FILES for name in paths.files_under(workdir)):
    return
  store_errors.retry(lambda: _remove(workdir, keep_folder=before == 'unused'),
                     f'Removing what the refused run made in {workdir}')


def _remove(workdir: str, keep_folder: bool):
  node = epath.Path(workdir)
  if not keep_folder:
    node.rmtree(missing_ok=True)
    return
  for child in node.iterdir():
    if child.is_dir():
      child.rmtree(missing_ok=True)
    else:
      child.unlink(missing_ok=True)
