"""The training order: a fresh global permutation per epoch, any step computable, per-process rows."""
import numpy as np

from irevnet_jax.data import data_order


def test_epochs_are_permutations_that_change_with_epoch_and_seed():
  n = 1000
  orders = {(s, e): data_order.epoch_permutation(s, e, n) for s in (0, 1) for e in (0, 1, 2)}
  for order in orders.values():
    assert order.dtype == np.int64 and sorted(order) == list(range(n))
  assert len({o.tobytes() for o in orders.values()}) == len(orders)
  np.testing.assert_array_equal(data_order.epoch_permutation(0, 1, n), orders[0, 1])
  # Golden values: the order may not change between versions (resumed runs rely on it).
  assert data_order.epoch_permutation(0, 0, 8).tolist() == [6, 5, 4, 0, 3, 1, 2, 7]


def test_every_epoch_reshuffles_the_files_too():
  """With 10 files of 100 records, an epoch's first records come from files in a new order
  each epoch, and neighbouring records rarely share a file."""
  files, per_file = 10, 100
  first_touch = []
  for epoch in range(3):
    shard = data_order.epoch_permutation(7, epoch, files * per_file) // per_file
    _, first = np.unique(shard, return_index=True)
    first_touch.append(tuple(np.argsort(first)))     # files in the order first read
    assert np.mean(shard[1:] == shard[:-1]) < 0.2    # ~1/10 for a global shuffle
  assert len(set(first_touch)) == 3


def test_rows_of_any_step_without_the_steps_before():
  n, seed = 10, 3
  order = data_order.TrainOrder(n, seed, global_batch=4)
  stream = np.concatenate([data_order.epoch_permutation(seed, e, n) for e in range(3)])
  for step in (0, 1, 2, 3, 6):                  # step 2 spans epochs 0 and 1
    keys, seeds = order.rows(step, 0, 4)
    np.testing.assert_array_equal(keys, stream[step * 4:(step + 1) * 4])
    epochs = np.arange(step * 4, step * 4 + 4) // n
    np.testing.assert_array_equal(seeds[:, 1], epochs * n + keys)
    assert len(set(seeds[:, 0])) == 1 and seeds.dtype == np.int64
  fresh = data_order.TrainOrder(n, seed, global_batch=4)   # jumps straight to step 6
  for a, b in zip(fresh.rows(6, 0, 4), order.rows(6, 0, 4)):
    np.testing.assert_array_equal(a, b)


def test_process_rows_split_the_global_batch_whatever_the_process_count():
  n, seed, global_batch = 24, 5, 6
  whole = data_order.TrainOrder(n, seed, global_batch)
  for processes in (1, 2, 3):
    local = global_batch // processes
    orders = [data_order.TrainOrder(n, seed, global_batch) for _ in range(processes)]
    epoch = []
    for step in range(n // global_batch):
      parts = [o.rows(step, p * local, local) for p, o in enumerate(orders)]
      keys = np.concatenate([k for k, _ in parts])
      np.testing.assert_array_equal(keys, whole.rows(step, 0, global_batch)[0])
      np.testing.assert_array_equal(np.concatenate([s for _, s in parts]),
                                    whole.rows(step, 0, global_batch)[1])
      epoch += keys.tolist()
    assert sorted(epoch) == list(range(n))        # disjoint, complete
