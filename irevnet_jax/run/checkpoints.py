"""Checkpoints of a training run: Orbax `CheckpointManager` around the host train state.

Layout of a workdir:

    <workdir>/config.json               the experiment config of the run
    <workdir>/checkpoints/<step>/       Orbax checkpoints (the last `keep` of them)
    <workdir>/corrupt_checkpoints/      checkpoints that failed to restore, moved aside

The saved tree is the unreplicated state as host numpy arrays:
{'params', 'batch_stats', 'opt_state', 'step', 'rng'}. Every process calls
`save` (Orbax writes collectively; replicated numpy arrays are written by
process 0). Orbax writes into a temporary directory and renames it when done,
so a run killed mid-save leaves the previous checkpoints intact.

An asynchronous `save` blocks the caller only while Orbax starts the write: the
arrays are neither copied (the caller hands over a tree it will not modify) nor
checksummed on the calling thread; the CRC-32s (`irevnet_jax.run.checksums`) are
computed and written by Orbax's commit thread, before the checkpoint is committed.
"""
import contextlib
import logging as std_logging
import os
import shutil
import time
from typing import Optional, Tuple

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from irevnet_jax.run import checksums as checksums_lib, orbax_logs
from irevnet_jax.run import workdir as workdir_lib
from irevnet_jax.run.workdir import read_config

CHECKPOINT_DIR = 'checkpoints'
CORRUPT_DIR = 'corrupt_checkpoints'
STATE_ITEM = 'default'       # the item name Orbax gives a single-item checkpoint
CHECKSUM_ITEM = 'checksums'


CorruptCheckpoint = checksums_lib.CorruptCheckpoint
checksums, verify = checksums_lib.checksums, checksums_lib.verify


class CheckpointMismatch(ValueError):
  """A checkpoint of another model or optimizer (its arrays have other shapes)."""


_reported_failures = orbax_logs.ReportedFailures()
std_logging.getLogger('asyncio').addFilter(_reported_failures)


class CheckpointSaveError(OSError):
  """Writing a checkpoint failed (disk full, permissions, ...)."""


def _short(error: BaseException, limit: int = 300) -> str:
  """`Type: message`, first line only and at most `limit` characters (Orbax and
  TensorStore errors carry whole JSON specs)."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ''
  if len(text) > limit:
    text = text[:limit] + '...'
  return f'{type(error).__name__}: {text}'


def _reason(error: BaseException) -> str:
  """Why a checkpoint does not restore, in a few words (without the checkpoint's name)."""
  return error.reason if isinstance(error, CorruptCheckpoint) else _short(error)


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
  return _short(error)


def _sync(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _check_matches(target, restored, what):
  """Orbax returns stored shapes even when the target's differ: reject those."""
  expected = jax.tree_util.tree_flatten_with_path(target)[0]
  got = dict(jax.tree_util.tree_flatten_with_path(restored)[0])
  wrong = [f'{jax.tree_util.keystr(path)}: {np.shape(got.get(path))} instead of {np.shape(leaf)}'
           for path, leaf in expected if np.shape(got.get(path)) != np.shape(leaf)]
  if wrong:
    raise CheckpointMismatch(f'{what} does not fit this run ({len(wrong)} arrays differ, e.g. '
                     f'{"; ".join(wrong[:3])}). If this workdir holds a run of another model '
                     f'or optimizer, use a new --workdir.')


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
    self.workdir = workdir_lib.resolve(workdir)     # a local path or a URL (gs://...)
    self.directory = workdir_lib.join(self.workdir, CHECKPOINT_DIR)
    self._read_only = read_only
    self._options = ocp.CheckpointManagerOptions(   # the values Orbax forces when read-only
        max_to_keep=None if read_only else keep, save_interval_steps=0 if read_only else 1,
        create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only, enable_async_checkpointing=use_async)
    self._manager = self._open()
    self._pending = None    # the step of the latest save started

  def _open(self):
    """The manager: the state through a PyTree handler that writes the caller's numpy arrays
    without a defensive copy (a copy of the whole state on the training thread), the
    checksums through `checksums.Handler` (computed in the commit thread)."""
    handlers = {STATE_ITEM: ocp.PyTreeCheckpointHandler(type_handler_registry=_NO_COPY_TYPES),
                CHECKSUM_ITEM: checksums_lib.Handler()}
    with orbax_logs.quiet_read_only() if self._read_only else contextlib.nullcontext():
      return ocp.CheckpointManager(epath.Path(self.directory), item_handlers=handlers,
                                   options=self._options)

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: dict):
    """Starts saving `state` (host numpy tree) with its checksums as checkpoint `step`;
    returns before it is on disk when asynchronous (`wait` blocks), without copying or
    reading the arrays: do not modify them until then. Raises CheckpointSaveError if this
    or an earlier background save failed."""
    self.check()
    if step in self._manager.all_steps():
      return
    state = jax.tree_util.tree_map(np.asarray, state)   # numpy scalars as 0-d arrays (views)
    items = {STATE_ITEM: ocp.args.PyTreeSave(state), CHECKSUM_ITEM: checksums_lib.Save(state)}
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
    _reported_failures.paths.add(os.path.join(self.directory, str(step)))
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
    """Restores checkpoint `step`, or the latest one that restores cleanly.

    Checkpoints newer than the one restored that fail to restore are reported
    and, with `move_corrupt`, moved to `<workdir>/corrupt_checkpoints/` (by
    process 0). When none restores, nothing is moved and the error is raised:
    that is a mismatch (another model in this workdir), not corruption.
    `target` gives the tree structure and dtypes (numpy leaves); without it the
    raw tree of dicts and lists comes back.
    Returns (state, step), or (None, None) when there are no checkpoints.
    """
    available = sorted(self._manager.all_steps(), reverse=True)
    if step is not None and step not in available:
      raise ValueError(f'No checkpoint at step {step} in {self.directory}; '
                       f'available steps: {sorted(available)}.')
    failed = []
    for candidate in [step] if step is not None else available:
      try:
        restored = self._restore_verified(candidate, target)
      except CheckpointMismatch:
        raise
      except Exception as error:  # pylint: disable=broad-except
        _reported_failures.paths.add(os.path.join(self.directory, str(candidate), ''))
        failed.append((candidate, error))
        continue
      if failed:
        self._fall_back(failed, candidate, move_corrupt)
      return restored, candidate
    if failed:
      bad, error = failed[0]
      raise ValueError(
          f'No checkpoint in {self.directory} restores (steps {[f for f, _ in failed]}); '
          f'step {bad}: {_reason(error)}. If this workdir holds a run of another model or '
          f'optimizer, use a new --workdir.') from error
    return None, None

  def _fall_back(self, failed, used: int, move_corrupt: bool):
    """Moves the unusable checkpoints aside (with `move_corrupt`) and says so in one line."""
    moved = [self._move_aside(bad) for bad, _ in failed] if move_corrupt else []
    steps = ', '.join(str(bad) for bad, _ in failed)
    if len(failed) == 1:
      what = f'Checkpoint {steps} in {self.directory} is unusable ({_reason(failed[0][1])})'
    else:
      what = (f'Checkpoints {steps} in {self.directory} are unusable (' +
              '; '.join(f'{bad}: {_reason(error)}' for bad, error in failed) + ')')
    where = ''
    if moved:
      where = (f' and moved it to {moved[0]}' if len(moved) == 1 and moved[0] else
               f' and moved {"it" if len(moved) == 1 else "them"} to '
               f'{os.path.join(self.workdir, CORRUPT_DIR)}')
    logging.error('%s; using step %d instead%s.', what, used, where)

  def _restore_verified(self, step: int, target: Optional[dict]):
    """Checkpoint `step`, checked against the target's shapes and its checksums."""
    what = f'Checkpoint {step} in {self.directory}'
    step_dir = epath.Path(self.directory) / str(step)
    if not (step_dir / STATE_ITEM / '_METADATA').exists():
      raise CorruptCheckpoint(what, f'its tree metadata {STATE_ITEM}/_METADATA is missing')
    has_checksums = (step_dir / CHECKSUM_ITEM).is_dir()   # older versions saved none
    restore_args = (None if target is None
                    else ocp.checkpoint_utils.construct_restore_args(target))
    items = {STATE_ITEM: ocp.args.PyTreeRestore(item=target, restore_args=restore_args)}
    if has_checksums:
      items[CHECKSUM_ITEM] = checksums_lib.Restore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    state = restored[STATE_ITEM]
    if target is not None:
      _check_matches(target, state, what)
    verify(state, restored[CHECKSUM_ITEM] if has_checksums else None, what)
    return state

  def _move_aside(self, step: int) -> Optional[str]:
    """Moves checkpoint `step` to `<workdir>/corrupt_checkpoints/<step>-<time>` (process 0);
    returns that path on process 0, None on the others."""
    _sync(f'checkpoint_corrupt_{step}_before')
    destination = None
    if jax.process_index() == 0:
      destination = epath.Path(self.workdir, CORRUPT_DIR, f'{step}-{int(time.time())}')
      destination.parent.mkdir(parents=True, exist_ok=True)
      source = epath.Path(self.directory, str(step))
      if workdir_lib.is_url(self.workdir):
        source.rename(destination)      # object stores: copy, then delete
      else:
        shutil.move(source, destination)
      destination = str(destination)
    _sync(f'checkpoint_corrupt_{step}_after')
    self._manager.close()
    self._manager = self._open()
    return destination


def load_run(workdir: str, step: Optional[int] = None):
  """Loads a finished or running training run for analysis.

  Returns (config: ConfigDict, variables: {'params', 'batch_stats'} as host numpy
  arrays (unreplicated), step: int). `step=None` takes the latest checkpoint that
  restores (a corrupt one is reported and skipped, not moved).
  """
  config = read_config(workdir)
  checkpointer = Checkpointer(workdir, keep=max(1, int(config.get('keep_checkpoints', 1))),
                              use_async=False, read_only=True)
  try:
    if not checkpointer.all_steps():
      raise FileNotFoundError(f'No checkpoints in {checkpointer.directory}.')
    state, step = checkpointer.restore(step=step, move_corrupt=False)
  finally:
    checkpointer.close()
  if state is None:
    raise ValueError(f'No checkpoint in {checkpointer.directory} could be restored.')
  as_numpy = lambda tree: jax.tree_util.tree_map(np.asarray, tree)
  variables = {'params': as_numpy(state['params']),
               'batch_stats': as_numpy(state.get('batch_stats', {}))}
  return config, variables, int(step)
