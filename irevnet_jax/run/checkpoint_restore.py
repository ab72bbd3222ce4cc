"""Restoring a run's checkpoint: the newest one that restores cleanly, verified, and past
corrupt ones in one line (`checkpoints.Checkpointer.restore` calls `restore` here).

A checkpoint restores cleanly when its tree metadata is there, its arrays have the
target's shapes (else `CheckpointMismatch`: another model in this workdir, which is
raised, never skipped) and its CRC-32s and values check out (`checksums.verify`).

What a failed read means decides what happens (`store_errors`):
- evidence of corruption (a checksum mismatch, non-finite values, a missing or
  undecodable file, a TensorStore DATA_LOSS / NOT_FOUND): the next older checkpoint is
  tried; the corrupt ones are reported in one error line and, with `move_corrupt`, moved
  to `<workdir>/corrupt_checkpoints/<step>-<time>` by process 0 (on an object store: the
  objects copied, then deleted). When none restores, nothing is moved and the error is
  raised.
- the store unreachable or busy (a reset connection, a timeout, HTTP 429/5xx): the read
  is retried with backoff, then `store_errors.StoreUnavailable` ends the run in one line;
- anything else (permissions, a library error): `CheckpointUnreadable`, one line.
Only corruption rewinds to an older checkpoint: otherwise nothing is moved, no older step
is used, and the run's records (metrics.jsonl) stay as they are.

A checkpoint's items: the state (`STATE_ITEM`, an Orbax PyTree), its checksums
(`CHECKSUM_ITEM`) and the loop's bookkeeping (`BOOKKEEPING_ITEM`, a JSON dict committed
with the state); older versions saved no checksums and no bookkeeping.
"""
import functools
import os
import shutil
import time
from typing import Optional, Tuple

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from irevnet_jax.errors import UserError
from irevnet_jax.run import checksums as checksums_lib, orbax_logs, paths, store_errors

STATE_ITEM = 'default'       # the item name Orbax gives a single-item checkpoint
CHECKSUM_ITEM = 'checksums'
BOOKKEEPING_ITEM = 'bookkeeping'
CORRUPT_DIR = 'corrupt_checkpoints'
COMMIT_MARKER = 'commit_success.txt'  # on object stores, what makes an Orbax step committed


class CheckpointMismatch(UserError):
  """A checkpoint of another model or optimizer (its arrays have other shapes)."""


class CheckpointUnreadable(UserError):
  """A checkpoint that fails to restore for a reason that is neither evidence of corruption
  nor the store being unreachable: nothing is moved and no older checkpoint is used."""


def short_error(error: BaseException, limit: int = 300) -> str:
  """`Type: message`, first line only and at most `limit` characters (Orbax and
  TensorStore errors carry whole JSON specs): `store_errors.short`."""
  return store_errors.short(error, limit)


def _reason(error: BaseException) -> str:
  """Why a checkpoint does not restore, in a few words (without the checkpoint's name)."""
  return error.reason if isinstance(error, checksums_lib.CorruptCheckpoint) else short_error(error)


def restore(manager: ocp.CheckpointManager, workdir: str, directory: str,
            target: Optional[dict], step: Optional[int], move_corrupt: bool
            ) -> Tuple[Optional[dict], Optional[int], bool, dict]:
  """Checkpoint `step` of `manager` (in `directory`), or the newest that restores cleanly.

  Args:
    manager: the Orbax manager of `directory`.
    workdir: the run directory, where corrupt checkpoints are moved (`CORRUPT_DIR`).
    directory: the checkpoints' directory (`<workdir>/checkpoints`).
    target: a tree of numpy arrays giving the structure, shapes and dtypes to restore;
      None: the raw tree of dicts and lists comes back, unchecked against shapes.
    step: the checkpoint to restore, and no other; None: the newest usable one, falling
      back past corrupt ones (transient store errors are retried, never fallen back past).
    move_corrupt: move the corrupt checkpoints fallen back past aside (process 0 only).
  Returns:
    (state, step, moved, bookkeeping): `moved` says checkpoints were moved aside (reopen
    the manager then); `bookkeeping` is the dict saved with that state ({} if none).
    (None, None, False, {}) when there are no checkpoints.
  Raises:
    UserError: no checkpoint at `step`, or none restores; `CheckpointMismatch` (a
    UserError) for another model's or optimizer's checkpoint; `CheckpointUnreadable`
    for a failure that is no sign of corruption; `store_errors.StoreUnavailable`.
  """
  available = sorted(manager.all_steps(), reverse=True)
  if step is not None and step not in available:
    raise UserError(f'No checkpoint at step {step} in {directory}; '
                    f'available steps: {sorted(available)}.')
  failed = []
  for candidate in [step] if step is not None else available:
    read = functools.partial(_restore_verified, manager, directory, candidate, target)
    try:
      state, bookkeeping = store_errors.retry(
          read, f'Reading checkpoint {candidate} in {directory}')
    except Exception as error:  # pylint: disable=broad-except
      orbax_logs.REPORTED_FAILURES.paths.add(os.path.join(directory, str(candidate), ''))
      if isinstance(error, (CheckpointMismatch, store_errors.StoreUnavailable)):
        raise
      if not store_errors.is_corruption(error):
        raise CheckpointUnreadable(
            f'Checkpoint {candidate} in {directory} could not be read ({short_error(error)}); '
            f'that is no sign of corruption, so nothing was moved and no older checkpoint '
            f'was used: fix the cause and rerun (to resume from an older checkpoint instead, '
            f'move {paths.join(directory, str(candidate))} elsewhere).') from error
      failed.append((candidate, error))
      continue
    moved = _fall_back(workdir, directory, failed, candidate, move_corrupt) if failed else []
    return state, candidate, bool(moved), bookkeeping
  if failed:
    bad, error = failed[0]
    raise UserError(
        f'No checkpoint in {directory} restores (steps {[f for f, _ in failed]}); '
        f'step {bad}: {_reason(error)}. If this workdir holds a run of another model or '
        f'optimizer, use a new --workdir.') from error
  return None, None, False, {}


def _restore_verified(manager, directory: str, step: int, target: Optional[dict]):
  """(state, bookkeeping) of checkpoint `step`, the state checked against the target's
  shapes and its checksums."""
  what = f'Checkpoint {step} in {directory}'
  step_dir = epath.Path(directory) / str(step)
  if not (step_dir / STATE_ITEM / '_METADATA').exists():
    raise checksums_lib.CorruptCheckpoint(
        what, f'its tree metadata {STATE_ITEM}/_METADATA is missing')
  # Older versions saved neither. Not is_dir(): fsspec answers False when the store fails.
  has_checksums = (step_dir / CHECKSUM_ITEM).exists()
  has_bookkeeping = (step_dir / BOOKKEEPING_ITEM).exists()
  restore_args = (None if target is None
                  else ocp.checkpoint_utils.construct_restore_args(target))
  items = {STATE_ITEM: ocp.args.PyTreeRestore(item=target, restore_args=restore_args)}
  if has_checksums:
    items[CHECKSUM_ITEM] = checksums_lib.Restore()
  if has_bookkeeping:
    items[BOOKKEEPING_ITEM] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  state = restored[STATE_ITEM]
  if target is not None:
    _check_matches(target, state, what)
  checksums_lib.verify(state, restored[CHECKSUM_ITEM] if has_checksums else None, what)
  return state, dict(restored[BOOKKEEPING_ITEM]) if has_bookkeeping else {}


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


def _fall_back(workdir: str, directory: str, failed, used: int, move_corrupt: bool):
  """Moves the unusable checkpoints aside (with `move_corrupt`) and says so in one line;
  returns where they went (None on processes other than 0)."""
  moved = [_move_aside(workdir, directory, bad) for bad, _ in failed] if move_corrupt else []
  steps = ', '.join(str(bad) for bad, _ in failed)
  if len(failed) == 1:
    what = f'Checkpoint {steps} in {directory} is unusable ({_reason(failed[0][1])})'
  else:
    what = (f'Checkpoints {steps} in {directory} are unusable (' +
            '; '.join(f'{bad}: {_reason(error)}' for bad, error in failed) + ')')
  where = ''
  if moved:
    where = (f' and moved it to {moved[0]}' if len(moved) == 1 and moved[0] else
             f' and moved {"it" if len(moved) == 1 else "them"} to '
             f'{os.path.join(workdir, CORRUPT_DIR)}')
  logging.error('%s; using step %d instead%s.', what, used, where)
  return moved


def _sync(name: str):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _move_aside(workdir: str, directory: str, step: int) -> Optional[str]:
  """Moves checkpoint `step` to `<workdir>/corrupt_checkpoints/<step>-<time>` (process 0);
  returns that path on process 0, None on the others."""
  _sync(f'checkpoint_corrupt_{step}_before')
  destination = None
  if jax.process_index() == 0:
    destination = paths.join(workdir, CORRUPT_DIR, f'{step}-{int(time.time())}')
    source = paths.join(directory, str(step))
    if paths.is_url(workdir):
      _move_objects(source, destination)
    else:
      os.makedirs(os.path.dirname(destination), exist_ok=True)
      shutil.move(source, destination)
  _sync(f'checkpoint_corrupt_{step}_after')
  paths.refresh(directory)    # every process: the step is gone from this one's listings
  return destination


def _move_objects(source: str, destination: str):
  """Moves the objects under the URL `source` to `destination` (an object store has no
  rename, and no folders): earlier incomplete copies of this step are deleted, every object
  is copied (the commit marker last: a copy holding it is complete), then the source's
  marker is deleted (Orbax no longer lists the step; the next writer deletes what is left)
  and then its other objects. Killed at any point, a rerun finds the step either committed
  and whole (it is moved again) or uncommitted (ignored, then cleaned up by Orbax)."""
  fs, url = paths.filesystem(source), source
  paths.refresh(url)
  retry = lambda call, what: store_errors.retry(call, f'{what} {url}')
  source, destination = (path.split('://', 1)[1].rstrip('/') for path in (source, destination))
  step = os.path.basename(source)
  for old in retry(lambda: fs.glob(f'{os.path.dirname(destination)}/{step}-*'),
                   'Listing the copies of'):
    if not retry(functools.partial(fs.exists, f'{old}/{COMMIT_MARKER}'), 'Listing a copy of'):
      retry(functools.partial(_delete, fs, old), 'Deleting an incomplete copy of')
  names = [os.path.relpath(name, source) for name in retry(lambda: fs.find(source), 'Listing')]
  data = [name for name in names if name != COMMIT_MARKER]
  copies = ([f'{source}/{name}' for name in data], [f'{destination}/{name}' for name in data])
  retry(lambda: fs.copy(*copies), 'Copying')
  if COMMIT_MARKER in names:
    retry(lambda: fs.copy(f'{source}/{COMMIT_MARKER}', f'{destination}/{COMMIT_MARKER}'),
          'Copying')
    retry(lambda: _delete(fs, f'{source}/{COMMIT_MARKER}'), 'Uncommitting')
  retry(lambda: _delete(fs, source), 'Deleting')


def _delete(fs, name: str):
  """Deletes the object `name` or every object under it; nothing there is no error (a retry
  after a request that did delete)."""
  try:
    fs.rm(name, recursive=True)
  except FileNotFoundError:
    pass
