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
"""
import logging as std_logging
import os
import shutil
import time
from typing import Optional, Tuple
import zlib

from absl import logging
import jax
from etils import epath
import numpy as np
import orbax.checkpoint as ocp

from irevnet_jax import workdir as workdir_lib
from irevnet_jax.workdir import read_config

CHECKPOINT_DIR = 'checkpoints'
CORRUPT_DIR = 'corrupt_checkpoints'
STATE_ITEM = 'default'       # the item name Orbax gives a single-item checkpoint
CHECKSUM_ITEM = 'checksums'


class CorruptCheckpoint(ValueError):
  """A checkpoint whose arrays fail their checksums or hold non-finite values."""


class CheckpointMismatch(ValueError):
  """A checkpoint of another model or optimizer (its arrays have other shapes)."""


class _ReportedFailures(std_logging.Filter):
  """Drops asyncio's 'exception was never retrieved' records of Orbax's per-array read
  tasks in a checkpoint that `restore` has already reported as unusable in one line (they
  surface later, often at interpreter exit, one traceback per array)."""

  def __init__(self):
    super().__init__()
    self.paths = set()

  def filter(self, record):
    message = record.getMessage()
    return not ('never retrieved' in message and any(p in message for p in self.paths))


_reported_failures = _ReportedFailures()
std_logging.getLogger('asyncio').addFilter(_reported_failures)


class CheckpointSaveError(OSError):
  """Writing a checkpoint failed (disk full, permissions, ...)."""


def _path_name(path) -> str:
  """'params/stages_0/first/...': the same for a dict tree and Orbax's raw restore of it."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def checksums(state) -> dict:
  """{array path: CRC-32 of its dtype, shape and bytes} for a host state."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    leaf = np.ascontiguousarray(leaf)
    header = f'{leaf.dtype.str}{leaf.shape}'.encode()
    out[_path_name(path)] = f'{zlib.crc32(leaf.data, zlib.crc32(header)):08x}'
  return out


def verify(state, expected: Optional[dict], what: str):
  """Raises CorruptCheckpoint if an array of `state` fails its checksum in `expected` (arrays
  that `expected` does not name are not checked) or holds NaN / infinity."""
  got = checksums(state)
  bad = sorted(k for k in got if expected is not None and k in expected and got[k] != expected[k])
  if bad:
    raise CorruptCheckpoint(f'{what}: {len(bad)} array(s) fail their checksum, e.g. {bad[0]}')
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    leaf = np.asarray(leaf)
    if leaf.dtype.kind == 'f' and not np.isfinite(leaf).all():
      raise CorruptCheckpoint(f'{what}: non-finite values in {_path_name(path)}')


def _short(error: BaseException, limit: int = 300) -> str:
  """`Type: message`, first line only and at most `limit` characters (Orbax and
  TensorStore errors carry whole JSON specs)."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ''
  if len(text) > limit:
    text = text[:limit] + '...'
  return f'{type(error).__name__}: {text}'


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


class Checkpointer:
  """Saves and restores the host train state under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int, use_async: bool = True, read_only: bool = False):
    """`read_only`: for readers of a run that may still be training (no writes, no
    clean-up); otherwise unfinished saves of an interrupted run are deleted."""
    self.workdir = workdir_lib.resolve(workdir)     # a local path or a URL (gs://...)
    self.directory = workdir_lib.join(self.workdir, CHECKPOINT_DIR)
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only, enable_async_checkpointing=use_async)
    self._manager = self._open()
    self._pending = None    # the step of the latest save started

  def _open(self):
    return ocp.CheckpointManager(epath.Path(self.directory),
                                 item_names=(STATE_ITEM, CHECKSUM_ITEM), options=self._options)

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: dict):
    """Starts saving `state` (host numpy tree) with its checksums as checkpoint `step`;
    returns before it is on disk when asynchronous (`wait` blocks). Raises
    CheckpointSaveError if this or an earlier background save failed."""
    self.check()
    if step in self._manager.all_steps():
      return
    items = {STATE_ITEM: ocp.args.StandardSave(state),
             CHECKSUM_ITEM: ocp.args.JsonSave(checksums(state))}
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
        logging.error('Checkpoint %d in %s is unusable (%s).', candidate, self.directory,
                      _short(error))
        _reported_failures.paths.add(os.path.join(self.directory, str(candidate), ''))
        failed.append((candidate, error))
        continue
      if failed:
        logging.error('Using the previous checkpoint, step %d%s.', candidate,
                      '; the unusable ones move to ' + CORRUPT_DIR if move_corrupt else '')
        if move_corrupt:
          for bad, _ in failed:
            self._move_aside(bad)
      return restored, candidate
    if failed:
      bad, error = failed[0]
      raise ValueError(
          f'No checkpoint in {self.directory} restores (steps {[f for f, _ in failed]}); '
          f'step {bad}: {_short(error)}. If this workdir holds a run of another model or '
          f'optimizer, use a new --workdir.') from error
    return None, None

  def _restore_verified(self, step: int, target: Optional[dict]):
    """Checkpoint `step`, checked against the target's shapes and its checksums."""
    has_checksums = epath.Path(self.directory, str(step), CHECKSUM_ITEM).is_dir()
    items = {STATE_ITEM: ocp.args.StandardRestore(target)}
    if has_checksums:   # checkpoints of older versions have none
      items[CHECKSUM_ITEM] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    state = restored[STATE_ITEM]
    what = f'Checkpoint {step} in {self.directory}'
    if target is not None:
      _check_matches(target, state, what)
    verify(state, restored[CHECKSUM_ITEM] if has_checksums else None, what)
    return state

  def _move_aside(self, step: int):
    _sync(f'checkpoint_corrupt_{step}_before')
    if jax.process_index() == 0:
      destination = epath.Path(self.workdir, CORRUPT_DIR, f'{step}-{int(time.time())}')
      destination.parent.mkdir(parents=True, exist_ok=True)
      source = epath.Path(self.directory, str(step))
      if workdir_lib.is_url(self.workdir):
        source.rename(destination)      # object stores: copy, then delete
      else:
        shutil.move(source, destination)
      logging.error('Moved the unusable checkpoint %d to %s.', step, destination)
    _sync(f'checkpoint_corrupt_{step}_after')
    self._manager.close()
    self._manager = self._open()


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
