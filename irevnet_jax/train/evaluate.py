"""Evaluation over an eval split: loss and accuracy of every example, inversion of a subset.

Loss, top-1 and top-5 accuracy cost one forward pass per image at the trained
precision, summed over the whole split (each example once: padding rows have
mask 0). The relative inversion error ||invert(forward(x)) - x|| / ||x|| runs
the exact (float32, 'highest') model twice per image, so it is measured on a
fixed subset of the split: `inversion_subset(N, k, seed)`, the same at every
evaluation of a run, chosen by the examples' `index` in the split.
"""
import math
from typing import Callable, Dict, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np


class Interrupted(Exception):
  """`should_stop()` became true between two evaluation batches."""


def inversion_subset(num_examples: int, count: int, seed: int) -> np.ndarray:
  """Sorted indices of the `count` eval examples (all when count < 0 or >= num_examples)
  whose inversion is measured; fixed by (num_examples, count, seed)."""
  if count < 0 or count >= num_examples:
    return np.arange(num_examples)
  rng = np.random.default_rng([seed, num_examples, 7])
  return np.sort(rng.choice(num_examples, size=count, replace=False))


def _check(should_stop):
  if should_stop is not None and should_stop():
    raise Interrupted()


def _agreed_batches(count: int, local_batch: int) -> int:
  """Inversion batches every process runs: enough for the process with the most examples
  (collective steps must be called the same number of times everywhere)."""
  if jax.process_count() > 1:
    count = int(np.max(multihost_utils.process_allgather(np.array(count, np.int64))))
  return -(-count // local_batch)


def evaluate(prog, state, source, local_batch: int,
             inversion_examples: int = -1, seed: int = 0,
             should_stop: Optional[Callable[[], bool]] = None,
             progress: Optional[Callable[[str, int, int], None]] = None) -> Dict[str, float]:
  """Loss, accuracy and (invertible models) the inversion error over the eval split.

  Args:
    prog: the run's `program.Program` (its eval and inversion steps, its back end).
    state: the train state on the back end's devices (only params and batch_stats are read).
    source: a `DataSource`; its eval batches are padded, and padding is masked out.
    local_batch: this process's share of the global eval batch.
    inversion_examples: how many eval examples are inverted (-1: all, 0: none), a subset
      fixed by (split size, count, `seed`) (`inversion_subset`).
    seed: the run's seed.
    should_stop: polled before each batch; when it turns true, `Interrupted` is raised.
    progress: called as progress(pass name, batches started, batches) before each batch.
  Returns:
    {'eval/loss', 'eval/accuracy', 'eval/accuracy_top5', 'eval/num_examples'} as Python
    floats and, when examples are inverted, 'eval/inversion_rel_error' (||x -
    invert(forward(x))|| / ||x||, norms over the whole subset) and 'eval/inversion_examples'.
  """
  backend = prog.backend
  invert = prog.inversion_step is not None and inversion_examples != 0
  chosen = np.zeros(source.num_eval_examples + 1, bool)   # last entry: padding (index -1)
  if invert:
    chosen[inversion_subset(source.num_eval_examples, inversion_examples, seed)] = True
  kept = []

  total = -(-source.num_eval_examples // (local_batch * jax.process_count()))

  def batches():
    for done, batch in enumerate(
        source.eval_batches(local_batch, jax.process_index(), jax.process_count()), 1):
      _check(should_stop)
      if progress is not None:
        progress('loss and accuracy', done, total)
      if invert:
        rows = chosen[batch['index']] & (batch['mask'] > 0)
        if rows.any():
          kept.append(batch['image'][rows])
      yield {k: batch[k] for k in ('image', 'label', 'mask')}

  outputs = [prog.eval_step(state, batch) for batch in backend.prefetch(batches())]
  totals = _sum(backend.to_host(out) for out in outputs)
  count = max(totals.get('count', 0.0), 1.0)
  result = {'eval/loss': totals.get('loss', 0.0) / count,
            'eval/accuracy': totals.get('correct', 0.0) / count,
            'eval/accuracy_top5': totals.get('correct_top5', 0.0) / count,
            'eval/num_examples': totals.get('count', 0.0)}
  if invert:
    result.update(_inversion(prog, state, kept, local_batch, should_stop, progress))
  return result


def _inversion(prog, state, kept, local_batch, should_stop, progress=None):
  images = np.concatenate(kept) if kept else np.zeros((0, *prog.input_shape), np.uint8)
  num_batches = _agreed_batches(len(images), local_batch)
  padded = np.zeros((num_batches * local_batch, *images.shape[1:]), images.dtype)
  padded[:len(images)] = images
  mask = (np.arange(len(padded)) < len(images)).astype(np.float32)

  def batches():
    for start in range(0, len(padded), local_batch):
      _check(should_stop)
      if progress is not None:
        progress('inversion', start // local_batch + 1, num_batches)
      yield {'image': padded[start:start + local_batch], 'mask': mask[start:start + local_batch]}

  outputs = [prog.inversion_step(state, batch) for batch in prog.backend.prefetch(batches())]
  totals = _sum(prog.backend.to_host(out) for out in outputs)
  return {'eval/inversion_rel_error': math.sqrt(totals.get('error_sq', 0.0) /
                                                max(totals.get('image_sq', 0.0), 1e-30)),
          'eval/inversion_examples': totals.get('count', 0.0)}


def _sum(host_outputs) -> Dict[str, float]:
  totals = {}
  for out in host_outputs:
    for key, value in out.items():
      totals[key] = totals.get(key, 0.0) + float(value)
  return totals
