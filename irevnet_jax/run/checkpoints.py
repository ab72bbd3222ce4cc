"""Checkpoints of a training run: Orbax `CheckpointManager` around the host train state.

Layout of a workdir:

    <workdir>/config.json               the experiment config of the run
    <workdir>/checkpoints/<step>/       Orbax checkpoints (the last `keep` of them)
    <workdir>/corrupt_checkpoints/      checkpoints that failed to restore, moved aside

The saved tree is the unreplicated state as host numpy arrays:
{'params', 'batch_stats', 'opt_state', 'step', 'rng'}; beside it, the loop's bookkeeping
(a JSON dict, e.g. the train metrics since the last record) is committed with the state,
so a resume reads the bookkeeping of the checkpoint it restores. Every process calls
`save` (Orbax writes collectively; replicated numpy arrays are written by
process 0). Orbax writes into a temporary directory and renames it when done,
so a run killed mid-save leaves the previous checkpoints intact.

An asynchronous `save` blocks the caller only while Orbax starts the write: the
arrays are neither copied (the caller hands over a tree it will not modify) nor
checksummed on the calling thread; the CRC-32s (`irevnet_jax.run.checksums`) are
computed and written by Orbax's commit thread, before the checkpoint is committed.

`Checkpointer.restore` takes the newest checkpoint that restores cleanly, verified,
and falls back past unusable ones in one line (`irevnet_jax.run.checkpoint_restore`);
`load_run` reads a run read-only, for analysis and export.
"""
import contextlib
import os
from typing import Optional, Tuple

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from irevnet_jax.errors import UserError
from irevnet_jax.run import checkpoint_restore, checksums, orbax_logs, paths
from irevnet_jax.run import store_errors
from irevnet_jax.run.checkpoint_restore import (BOOKKEEPING_ITEM, CHECKSUM_ITEM, STATE_ITEM,
                                                short_error)
from irevnet_jax.run.run_config import read_config

CHECKPOINT_DIR = 'checkpoints'


class CheckpointSaveError(UserError, OSError):
  """Writing a checkpoint failed (disk full, permissions, ...)."""


def _errno_reason(error: BaseException) -> str:
  """The OS-level cause of a failed write (e.g. 'No space left on device'), if any."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.strerror:
      return seen.strerror
    text = str(seen)
    for reason in ('No space left on device', 'Permission denied', 'File too large',
                   'Read-only file system', 'Disk quota exceeded'):
      if reason in text:
        return reason
    seen = seen.__cause__ or seen.__context__
  return short_error(error)


# Orbax's default handlers, except that numpy arrays are written without a deep copy first.
_NO_COPY_TYPES = ocp.type_handlers.create_type_handler_registry(
    (int, ocp.type_handlers.ScalarHandler()), (float, ocp.type_handlers.ScalarHandler()),
    (np.number, ocp.type_handlers.ScalarHandler()),
    (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
    (jax.Array, ocp.type_handlers.get_type_handler(jax.Array)))


class Checkpointer:
  """Saves and restores the host train state under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int, use_async: bool = True, read_only: bool = False):
    """`read_only`: for readers of a run that may still be training (no writes, no
    clean-up); otherwise unfinished saves of an interrupted run are deleted."""
    self.workdir = paths.resolve(workdir)     # a local path or a URL (gs://...)
    self.directory = paths.join(self.workdir, CHECKPOINT_DIR)
    self._read_only = read_only
    self._options = ocp.CheckpointManagerOptions(   # the values Orbax forces when read-only
        max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
        create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only, enable_async_checkpointing=use_async)
    self._manager = self._open_retried()
    self._pending = None    # the step of the latest save started
    self.bookkeeping = {}   # saved with the checkpoint the latest `restore` returned

  def _open_retried(self):
    """`_open`, retried while the store fails transiently, and once more when its listing
    raises FileNotFoundError: gcsfs says so for a prefix whose last objects (a killed run's
    uncommitted step, which Orbax cleans up) were deleted while it listed."""
    what = f'Opening the checkpoints in {self.directory}'
    try:
      return store_errors.retry(self._open, what)
    except FileNotFoundError:
      if not paths.is_url(self.directory):
        raise
      return store_errors.retry(self._open, what)

  def _open(self):
    """The manager: the state through a PyTree handler that writes the caller's numpy arrays
    without a defensive copy (a copy of the whole state on the training thread), the
    checksums through `checksums.Handler` (computed in the commit thread), the bookkeeping
    as JSON (written in the commit thread too). It lists the steps stored now: this
    process's cached listings are forgotten first."""
    paths.refresh(self.directory)
    handlers = {STATE_ITEM: ocp.PyTreeCheckpointHandler(type_handler_registry=_NO_COPY_TYPES),
                CHECKSUM_ITEM: checksums.Handler(),
                BOOKKEEPING_ITEM: ocp.JsonCheckpointHandler()}
    with orbax_logs.quiet_read_only() if self._read_only else contextlib.nullcontext():
      return ocp.CheckpointManager(epath.Path(self.directory), item_handlers=handlers,
                                   options=self._options)

  def all_steps(self):
    """The committed steps; read from the store again when read-only (a reader of a run
    that is still training sees its newest checkpoint)."""
    if self._read_only:
      store_errors.retry(self._reload, f'Listing the checkpoints in {self.directory}')
    return sorted(self._manager.all_steps())

  def _reload(self):
    """The manager's list of steps read again (Orbax keeps the one it read when opened,
    gcsfs its listings), for readers."""
    paths.refresh(self.directory)
    self._manager.reload()

  def save(self, step: int, state: dict, bookkeeping: Optional[dict] = None):
    """Starts saving `state` (host numpy tree) with its checksums and `bookkeeping` (a
    JSON-serialisable dict, committed with the state: `restore` gives it back) as
    checkpoint `step`; returns before it is on disk when asynchronous (`wait` blocks),
    without copying or reading the arrays: do not modify them (nor `bookkeeping`) until
    then. Raises CheckpointSaveError if this or an earlier background save failed."""
    self.check()
    if step in self._manager.all_steps():
      return
    state = jax.tree_util.tree_map(np.asarray, state)   # numpy scalars as 0-d arrays (views)
    items = {STATE_ITEM: ocp.args.PyTreeSave(state), CHECKSUM_ITEM: checksums.Save(state),
             BOOKKEEPING_ITEM: ocp.args.JsonSave(bookkeeping or {})}
    try:
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as error:  # pylint: disable=broad-except
      self._fail(step, error)
    self._pending = step

  def check(self):
    """Raises CheckpointSaveError if a background save has failed (cheap; call often)."""
    try:
      self._manager.check_for_errors()
    except Exception as error:  # pylint: disable=broad-except
      self._fail(self._pending, error)

  def _fail(self, step, error):
    """Raises CheckpointSaveError for `step`, or for an earlier background save that has not
    committed (Orbax reports it when the next save starts)."""
    committed = set(self._manager.all_steps())
    if self._pending is not None and self._pending not in committed:
      step = self._pending
    good = [s for s in committed if s != step]
    last = (f'the last good checkpoint is step {max(good)}' if good
            else 'there is no earlier checkpoint')
    # Orbax's write tasks of this save may still log 'exception was never retrieved' (one
    # traceback per array, at garbage collection or exit): reported here in one line.
    orbax_logs.REPORTED_FAILURES.paths.add(os.path.join(self.directory, str(step)))
    raise CheckpointSaveError(
        f'Saving checkpoint {step} in {self.directory} failed: {_errno_reason(error)}; '
        f'{last}. Free space or fix permissions, then rerun the same command to resume'
    ) from error

  def wait(self):
    try:
      self._manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except
      self._fail(self._pending, error)
    self.check()

  def close(self):
    try:
      self.wait()
    finally:
      self._manager.close()

  def restore(self, target: Optional[dict] = None, step: Optional[int] = None,
              move_corrupt: bool = True) -> Tuple[Optional[dict], Optional[int]]:
    """Restores checkpoint `step`, or the latest one that restores cleanly; newer unusable
    ones are reported in one line and, with `move_corrupt`, moved to
    `<workdir>/corrupt_checkpoints/` (`checkpoint_restore.restore`). `target` gives the
    tree structure and dtypes (numpy leaves); without it the raw tree comes back.
    Returns (state, step), or (None, None) when there are no checkpoints; `bookkeeping` is
    then the dict saved with that state ({} when none was, or with no checkpoint). Read-only,
    the newest checkpoint committed now counts (`all_steps`).
    """
    if self._read_only:
      store_errors.retry(self._reload, f'Listing the checkpoints in {self.directory}')
    state, step, moved, self.bookkeeping = checkpoint_restore.restore(
        self._manager, self.workdir, self.directory, target, step, move_corrupt)
    if moved:   # the manager lists the steps it has seen: open it again
      self._manager.close()
      self._manager = self._open_retried()
    return state, step


def load_run(workdir: str, step: Optional[int] = None):
  """Loads a finished or running training run for analysis.

  Returns (config: ConfigDict, variables: {'params', 'batch_stats'} as host numpy
  arrays (unreplicated), step: int). `step=None` takes the latest checkpoint that
  restores (a corrupt one is reported and skipped, not moved), as committed at the call
  (a run that is still training included: no listing cached by this process is used).
  """
  paths.refresh(workdir)
  config = read_config(workdir)
  checkpointer = Checkpointer(workdir, keep=max(1, int(config.get('keep_checkpoints', 1))),
                              use_async=False, read_only=True)
  try:
    if not checkpointer.all_steps():
      raise UserError(f'No checkpoints in {checkpointer.directory}.')
    state, step = checkpointer.restore(step=step, move_corrupt=False)
  finally:
    checkpointer.close()
  if state is None:
    raise UserError(f'No checkpoint in {checkpointer.directory} could be restored.')
  as_numpy = lambda tree: jax.tree_util.tree_map(np.asarray, tree)
  variables = {'params': as_numpy(state['params']),
               'batch_stats': as_numpy(state.get('batch_stats', {}))}
  return config, variables, int(step)
