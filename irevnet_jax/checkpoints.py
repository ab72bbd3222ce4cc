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
import json
import os
import shutil
import time
from typing import Optional, Tuple

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'
CORRUPT_DIR = 'corrupt_checkpoints'
CONFIG_FILE = 'config.json'


def _tuples(value):
  """JSON lists back to the tuples that configs use."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def write_config(workdir: str, config: ml_collections.ConfigDict):
  """Writes `<workdir>/config.json` (call on process 0 only)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + '.tmp', 'w') as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(path + '.tmp', path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'No {CONFIG_FILE} in {workdir!r}: is it the workdir of a run?')
  with open(path) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))


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
    raise ValueError(f'{what} does not fit this run ({len(wrong)} arrays differ, e.g. '
                     f'{"; ".join(wrong[:3])}). If this workdir holds a run of another model '
                     f'or optimizer, use a new --workdir.')


class Checkpointer:
  """Saves and restores the host train state under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int, use_async: bool = True, read_only: bool = False):
    """`read_only`: for readers of a run that may still be training (no writes, no
    clean-up); otherwise unfinished saves of an interrupted run are deleted."""
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only, enable_async_checkpointing=use_async)
    self._manager = self._open()

  def _open(self):
    return ocp.CheckpointManager(self.directory, options=self._options)

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: dict):
    """Starts saving `state` (host numpy tree) as checkpoint `step`; returns before it is
    on disk when asynchronous (`wait` blocks)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
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
        restored = self._manager.restore(candidate, args=ocp.args.StandardRestore(target))
      except Exception as error:  # pylint: disable=broad-except
        logging.error('Checkpoint %d in %s cannot be restored (%s: %s).', candidate,
                      self.directory, type(error).__name__, error)
        failed.append((candidate, error))
        continue
      if target is not None:
        _check_matches(target, restored, f'Checkpoint {candidate} in {self.directory}')
      if failed:
        logging.error('Using the previous checkpoint, step %d.', candidate)
        if move_corrupt:
          for bad, _ in failed:
            self._move_aside(bad)
      return restored, candidate
    if failed:
      bad, error = failed[0]
      raise ValueError(
          f'No checkpoint in {self.directory} restores (steps {[f for f, _ in failed]}); '
          f'step {bad}: {type(error).__name__}: {error}. If this workdir holds a run of '
          f'another model or optimizer, use a new --workdir.') from error
    return None, None

  def _move_aside(self, step: int):
    _sync(f'checkpoint_corrupt_{step}_before')
    if jax.process_index() == 0:
      destination = os.path.join(self.workdir, CORRUPT_DIR, f'{step}-{int(time.time())}')
      os.makedirs(os.path.dirname(destination), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), destination)
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
