"""Resuming so that a run records what an uninterrupted run records, on every process alike.

- `check_same_step`: every process restored the same checkpoint (a workdir on disks that
  are not shared shows each host other checkpoints).
- `evaluated`: whether metrics.jsonl holds the evaluation at a step, so that one
  interrupted at step s is redone on resume (and one that finished is not).
- `TrainMetricsSinceLog`: the per-step train metrics since the last `train/*` record, kept
  with each checkpoint (`UNLOGGED_FILE`), so the first record after a resume averages the
  steps an uninterrupted run would have.
"""
import json
from typing import Dict, List, Optional, Tuple

from etils import epath
import jax
import numpy as np

from irevnet_jax.run import metrics, workdir as workdir_lib

UNLOGGED_FILE = 'train_metrics_since_log.json'   # beside the checkpoints, rewritten at each save
AVERAGED = ('loss', 'accuracy')                   # averaged over the steps of a train/* record
KEPT = AVERAGED + ('learning_rate',)


def check_same_step(restored_step: Optional[int]):
  """Raises ValueError unless every process restored `restored_step` (None: none)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    steps_found = multihost_utils.process_allgather(
        np.int64(-1 if restored_step is None else restored_step))
    if len(set(np.asarray(steps_found).ravel().tolist())) > 1:
      raise ValueError(
          f'The processes found different latest checkpoints in the workdir (steps '
          f'{np.asarray(steps_found).ravel().tolist()}, -1: none): give every process the same '
          f'shared --workdir (e.g. gs://bucket/runs/name), not a path on each host\'s own disk.')


def evaluated(workdir: str, step: int, is_chief: bool) -> bool:
  """Whether metrics.jsonl holds the evaluation at `step` (process 0 reads it and tells
  the others, so that every process runs the evaluation or none)."""
  done = is_chief and any(r.get('step') == step and 'eval/loss' in r
                          for r in metrics.read_jsonl(workdir))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    done = bool(multihost_utils.broadcast_one_to_all(np.int32(done)))
  return done


class TrainMetricsSinceLog:
  """(step, per-step metrics) fetched since the last `train/*` record, those of the steps
  before a resume included (read back from `UNLOGGED_FILE` of the restored checkpoint)."""

  def __init__(self, workdir: str, restored_step: Optional[int], enabled: bool):
    self.workdir, self.enabled = workdir, enabled
    self.rows: List[Tuple[int, Dict]] = (
        self._read(int(restored_step)) if restored_step is not None and enabled else [])

  def extend(self, fetched):
    """Adds fetched (step, {'loss', 'accuracy', 'learning_rate', ...}) rows."""
    self.rows.extend(fetched)

  def summary(self) -> Dict[str, float]:
    """{'train/loss', 'train/accuracy'}: means over the rows; 'train/learning_rate': the
    last row's. Starts the next record's rows."""
    summary = {f'train/{k}': sum(float(m[k]) for _, m in self.rows) / len(self.rows)
               for k in AVERAGED}
    summary['train/learning_rate'] = float(self.rows[-1][1]['learning_rate'])
    self.rows.clear()
    return summary

  def keep(self, step: int):
    """Writes the rows with checkpoint `step` (process 0)."""
    if not self.enabled:
      return
    rows = [[int(s), {k: float(m[k]) for k in KEPT}] for s, m in self.rows]
    workdir_lib.write_file(self.workdir, UNLOGGED_FILE,
                           json.dumps({'step': int(step), 'steps': rows}))

  def _read(self, step):
    """The rows `keep` wrote with checkpoint `step` ([] when the file is missing, unreadable
    or of another checkpoint)."""
    try:
      kept = json.loads(epath.Path(workdir_lib.join(self.workdir, UNLOGGED_FILE)).read_text())
      return [(int(s), m) for s, m in kept['steps']] if kept['step'] == step else []
    except (OSError, ValueError, KeyError, TypeError):
      return []
