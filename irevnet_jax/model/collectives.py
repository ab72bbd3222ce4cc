"""Cross-device sums and means whose result does not depend on how devices are spread over
processes, at the cost of a native all-reduce.

A native all-reduce (`lax.pmean`) adds the devices' values in an order chosen by
the backend: one process with 4 CPU devices adds them in index order, two
processes with 2 devices each (gloo) in another. The results differ in the last
bit, and a last-bit difference is enough to flip a ReLU whose input is ~1e-7 from
zero, which changes that step's gradient by about 1/batch: two runs that should be
equal drift apart by ~1% within a few dozen steps. `ordered_sum` instead adds in
an order fixed by the devices' global indices alone, so every device gets the
same bits whatever the process layout, for every device count N:

1. the tree's leaves are flattened into one buffer per dtype (L values);
2. large buffers (over `GATHER_BYTES`): padded to N * M values and cut into N
   chunks; an `all_to_all` hands chunk j of every device to device j (pure data
   movement), which adds the N copies in a fixed pairwise order of device index
   (`index_ordered_sum`) and `all_gather`s the N summed chunks back: the bytes
   of a reduce-scatter + all-gather, i.e. of a bandwidth-optimal all-reduce,
   2 (N - 1) / N * L values per device, in two collectives per dtype;
3. small buffers (BN statistics, metrics): one `all_gather` of the N copies and
   the same ordered sum (one collective, latency-bound; (N - 1) * L values).

Both ways add the same values in the same order, so they give the same bits.
Under autodiff (synchronised BN) the cotangent is summed the same way
(`jax.custom_vjp`; autodiff of `all_gather` would otherwise give a native
reduce-scatter).

Use it inside `pmap` or `shard_map` (axis given by name), like `lax.pmean`.
`mean(..., ordered=None)` takes the choice of the innermost `reductions(ordered)`
block (ordered outside any): the train step sets it, and the BatchNorm layers it
runs follow.
"""
import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

GATHER_BYTES = 64 * 1024   # buffers up to this size per device: one all_gather (latency-bound)

_ORDERED = contextvars.ContextVar('irevnet_jax_ordered_reductions', default=True)


@contextlib.contextmanager
def reductions(ordered: bool):
  """Within this block (at trace time), `mean`/`total` with ordered=None use the fixed
  device order (True) or the backend's native all-reduce (False)."""
  token = _ORDERED.set(bool(ordered))
  try:
    yield
  finally:
    _ORDERED.reset(token)


def index_ordered_sum(rows):
  """(N, ...) -> (...): the rows added pairwise in a fixed order of row index."""
  parts = [rows[i] for i in range(rows.shape[0])]
  while len(parts) > 1:
    pairs = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)]
    parts = pairs + parts[len(parts) - len(parts) % 2:]
  return parts[0]


def _buffer_sum_impl(flat, axis_name, size):
  """(L,) on each device -> (L,): the ordered sum over the devices of `axis_name`."""
  length = flat.shape[0]
  if length * flat.dtype.itemsize <= GATHER_BYTES:
    return index_ordered_sum(lax.all_gather(flat, axis_name))
  chunk = -(-length // size)
  padded = jnp.pad(flat, (0, chunk * size - length)).reshape(size, chunk)
  # Row k of the result: device k's chunk number (this device's index).
  received = lax.all_to_all(padded, axis_name, split_axis=0, concat_axis=0)
  summed = index_ordered_sum(received)
  return lax.all_gather(summed, axis_name, tiled=True)[:length]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _buffer_sum(flat, axis_name, size):
  return _buffer_sum_impl(flat, axis_name, size)


def _buffer_sum_fwd(flat, axis_name, size):
  return _buffer_sum_impl(flat, axis_name, size), None


def _buffer_sum_bwd(axis_name, size, _, cotangent):
  # pmap's semantics (those of lax.psum): the input's cotangent is the sum of the outputs'.
  return (_buffer_sum_impl(cotangent, axis_name, size),)


_buffer_sum.defvjp(_buffer_sum_fwd, _buffer_sum_bwd)


def ordered_sum(tree, axis_name):
  """Sum of each leaf over the devices of `axis_name`, in an order fixed by device index;
  one buffer per dtype (see the module docstring)."""
  size = lax.axis_size(axis_name)
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  if size == 1 or not leaves:
    return tree
  leaves = [jnp.asarray(leaf) for leaf in leaves]
  by_dtype = {}
  for index, leaf in enumerate(leaves):
    by_dtype.setdefault(leaf.dtype, []).append(index)
  summed = [None] * len(leaves)
  for indices in by_dtype.values():
    flat = jnp.concatenate([jnp.ravel(leaves[i]) for i in indices])
    flat = _buffer_sum(flat, axis_name, size)
    offsets = np.cumsum([0] + [leaves[i].size for i in indices])
    for i, start, stop in zip(indices, offsets[:-1], offsets[1:]):
      summed[i] = flat[start:stop].reshape(leaves[i].shape)
  # Materialised leaves: what follows compiles alike whatever it would have fused with (XLA
  # fuses the slices into their users differently in a pmap and a shard_map program, and
  # the users' last bits then differ).
  return jax.tree_util.tree_unflatten(treedef, lax.optimization_barrier(summed))


def ordered_mean(tree, axis_name):
  """Mean of each leaf over the devices of `axis_name`; the same bits on every device
  and for every process layout (see the module docstring)."""
  size = lax.axis_size(axis_name)
  return jax.tree_util.tree_map(lambda x: x / jnp.asarray(size, x.dtype),
                                ordered_sum(tree, axis_name))


def is_ordered(ordered=None) -> bool:
  """`ordered`, or where it is None the enclosing `reductions` block's choice (True outside)."""
  return _ORDERED.get() if ordered is None else ordered


def mean(tree, axis_name, ordered=None):
  """`ordered_mean` (ordered=True), or the backend's native `lax.pmean` (its last bits
  depend on the process layout); None: the enclosing `reductions` block's choice."""
  return ordered_mean(tree, axis_name) if is_ordered(ordered) else lax.pmean(tree, axis_name)


def total(tree, axis_name, ordered=None):
  """`ordered_sum` (ordered=True), or the backend's native `lax.psum`; None: as `mean`."""
  return ordered_sum(tree, axis_name) if is_ordered(ordered) else lax.psum(tree, axis_name)
