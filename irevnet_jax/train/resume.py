"""Resuming so that a run records what an uninterrupted run records, on every process alike.

- `check_same_step`: every process restored the same checkpoint (a workdir on disks that
  are not shared shows each host other checkpoints).
- `evaluated`: whether metrics.jsonl holds the evaluation at a step, so that one
  interrupted at step s is redone on resume (and one that finished is not).
- `TrainMetricsSinceLog`: the per-step train metrics since the last `train/*` record, saved
  in each checkpoint's bookkeeping (committed with its state), so the first record after a
  resume averages the steps an uninterrupted run would have.
"""
from typing import Dict, List, Optional, Tuple

import jax
from jax.experimental import multihost_utils
import numpy as np

from irevnet_jax.errors import UserError
from irevnet_jax.run import metrics

UNLOGGED_KEY = 'train_metrics_since_log'   # its key in a checkpoint's bookkeeping
AVERAGED = ('loss', 'accuracy')                   # averaged over the steps of a train/* record
KEPT = AVERAGED + ('learning_rate',)


def check_same_step(restored_step: Optional[int]):
  """Raises UserError unless every process restored `restored_step` (None: none)."""
  if jax.process_count() > 1:
    steps_found = multihost_utils.process_allgather(
        np.int64(-1 if restored_step is None else restored_step))
    if len(set(np.asarray(steps_found).ravel().tolist())) > 1:
      raise UserError(
          f'The processes found different latest checkpoints in the workdir (steps '
          f'{np.asarray(steps_found).ravel().tolist()}, -1: none): give every process the same '
          f'shared --workdir (e.g. gs://bucket/runs/name), not a path on each host\'s own disk.')


def evaluated(workdir: str, step: int, is_chief: bool) -> bool:
  """Whether metrics.jsonl holds the evaluation at `step` (process 0 reads it and tells
  the others, so that every process runs the evaluation or none)."""
  done = is_chief and any(r.get('step') == step and 'eval/loss' in r
                          for r in metrics.read_jsonl(workdir))
  if jax.process_count() > 1:
    done = bool(multihost_utils.broadcast_one_to_all(np.int32(done)))
  return done


class TrainMetricsSinceLog:
  """(step, per-step metrics) fetched since the last `train/*` record, those of the steps
  before a resume included (from the restored checkpoint's bookkeeping)."""

  def __init__(self, bookkeeping: Optional[dict] = None):
    """`bookkeeping`: what the restored checkpoint saved (`Checkpointer.bookkeeping`); a
    checkpoint of an older version without it gives no rows."""
    kept = (bookkeeping or {}).get(UNLOGGED_KEY, [])
    self.rows: List[Tuple[int, Dict]] = [(int(s), dict(m)) for s, m in kept]

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

  def bookkeeping(self) -> dict:
    """The rows as a new JSON-serialisable dict, to save with a checkpoint."""
    return {UNLOGGED_KEY: [[int(s), {k: float(m[k]) for k in KEPT}] for s, m in self.rows]}
