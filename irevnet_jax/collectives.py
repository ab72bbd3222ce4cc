"""Cross-device means whose result does not depend on how devices are spread over processes.

A native all-reduce (`lax.pmean`) adds the devices' values in an order chosen by
the backend: one process with 4 CPU devices adds them in index order, two
processes with 2 devices each (gloo) in another. The results differ in the last
bit, and a last-bit difference is enough to flip a ReLU whose input is ~1e-7 from
zero, which changes that step's gradient by about 1/batch: two runs that should be
equal drift apart by ~1% within a few dozen steps. `ordered_mean` instead adds in
an order fixed by the devices' global indices alone, so every device gets the
same bits whatever the process layout:

- power-of-two device counts: a butterfly. In round r each device adds the value
  of the device whose index differs in bit r; float addition is commutative, so
  both partners get the same bits. log2(N) exchanges of the full value.
- other counts: gather all values and add them in index order (N copies in memory).

Use it inside `pmap` or `shard_map` (axis given by name), like `lax.pmean`.
"""
import jax
import jax.numpy as jnp
from jax import lax


def _butterfly_sum(x, axis_name, size):
  step = 1
  while step < size:
    partners = [(i, i ^ step) for i in range(size)]
    x = x + lax.ppermute(x, axis_name, partners)
    step *= 2
  return x


def _gathered_sum(x, axis_name):
  gathered = lax.all_gather(x, axis_name)
  total = gathered[0]
  for i in range(1, gathered.shape[0]):
    total = total + gathered[i]
  return total


def ordered_sum(tree, axis_name):
  """Sum of each leaf over the devices of `axis_name`, in an order fixed by device index."""
  size = lax.axis_size(axis_name)
  if size == 1:
    return tree
  if size & (size - 1) == 0:
    return jax.tree_util.tree_map(lambda x: _butterfly_sum(x, axis_name, size), tree)
  return jax.tree_util.tree_map(lambda x: _gathered_sum(x, axis_name), tree)


def ordered_mean(tree, axis_name):
  """Mean of each leaf over the devices of `axis_name`; the same bits on every device
  and for every process layout (see the module docstring)."""
  size = lax.axis_size(axis_name)
  return jax.tree_util.tree_map(lambda x: x / jnp.asarray(size, x.dtype),
                                ordered_sum(tree, axis_name))


def mean(tree, axis_name, ordered: bool = True):
  """`ordered_mean` (ordered=True), or the backend's native `lax.pmean` (faster on large
  pods, but its last bits depend on the process layout)."""
  return ordered_mean(tree, axis_name) if ordered else lax.pmean(tree, axis_name)


def total(tree, axis_name, ordered: bool = True):
  """`ordered_sum` (ordered=True), or the backend's native `lax.psum`."""
  return ordered_sum(tree, axis_name) if ordered else lax.psum(tree, axis_name)
