"""Which training records each process reads at each step: a fresh global shuffle every epoch.

The one training order of every source of records (TFDS and the in-memory digits).

Pure numpy; no TensorFlow. The training stream is the endless concatenation of epochs,
epoch e being a permutation of the N record keys (0..N-1, the split's file order) drawn
from (seed, e). Global batch s holds the stream positions [s * G, (s + 1) * G), where
G = local batch x process count, and process p reads rows [p * B, (p + 1) * B) of it. So:

- every epoch reads every record once, in a new order that mixes all files of the split;
- the global batches do not depend on the number of processes;
- step s is computed, not replayed: a run resumed at step s reads no record before it;
- each process reads only the records of its own rows.

Permutations come from a fixed integer hash (splitmix64), not from numpy's generators,
whose streams may change between numpy versions: a resumed run on an upgraded machine
continues the same order.
"""
from typing import Dict, Tuple

import numpy as np

from irevnet_jax.errors import UserError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser, element-wise on uint64: a bijection that spreads every bit."""
  x = np.asarray(x, np.uint64)
  with np.errstate(over='ignore'):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def hash_words(*words: int) -> int:
  """A 64-bit hash of a few integers (each taken mod 2**64)."""
  h = np.uint64(0)
  for w in words:
    with np.errstate(over='ignore'):
      h = _mix64(h ^ (np.uint64(int(w) % 2**64) + _GOLDEN))
  return int(h)


def epoch_permutation(seed: int, epoch: int, num_records: int) -> np.ndarray:
  """Record keys in the order epoch `epoch` reads them: a permutation of range(N), int64 (N,).

  Sorting records by a keyed hash of their key: O(N log N) time, O(N) memory.
  """
  key = np.uint64(hash_words(seed, epoch))
  with np.errstate(over='ignore'):
    scores = _mix64(np.arange(num_records, dtype=np.uint64) + key)  # distinct: _mix64 is 1:1
  return np.argsort(scores, kind='stable').astype(np.int64)


def augment_key(seed: int) -> int:
  """A 63-bit word of the run's seed that, with an example's number, seeds its augmentation."""
  return hash_words(seed, 0x617567) >> 1   # 'aug'


class TrainOrder:
  """The record keys and augmentation seeds of any step's rows, for one run's seed.

  Keeps the permutations of the (at most two) epochs the last request touched.
  """

  def __init__(self, num_records: int, seed: int, global_batch: int):
    if num_records < 1 or global_batch < 1:
      raise UserError(f'num_records={num_records} and global_batch={global_batch} must '
                      'be >= 1.')
    self.num_records = int(num_records)
    self.seed = int(seed)
    self.global_batch = int(global_batch)
    self._augment_key = augment_key(seed)
    self._epochs: Dict[int, np.ndarray] = {}

  def permutation(self, epoch: int) -> np.ndarray:
    """`epoch_permutation` of this run, cached."""
    if epoch not in self._epochs:
      self._epochs[epoch] = epoch_permutation(self.seed, epoch, self.num_records)
    return self._epochs[epoch]

  def rows(self, step: int, first_row: int, count: int) -> Tuple[np.ndarray, np.ndarray]:
    """Rows [first_row, first_row + count) of global batch `step`.

    Returns (keys int64 (count,), seeds int64 (count, 2)): the records to read and, for
    each, the stateless seed of its augmentation, a function of (run seed, epoch, key)
    only (not of the step, batch size or process count).
    """
    positions = step * self.global_batch + first_row + np.arange(count, dtype=np.int64)
    epochs, offsets = np.divmod(positions, self.num_records)
    keys = np.empty(count, np.int64)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      keys[here] = self.permutation(int(epoch))[offsets[here]]
    for old in [e for e in self._epochs if e < epochs[0]]:
      del self._epochs[old]
    seeds = np.stack([np.full(count, self._augment_key, np.int64),
                      epochs * self.num_records + keys], axis=1)
    return keys, seeds
