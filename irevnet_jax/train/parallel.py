"""Data-parallel back ends: where the train state and batches live, and how steps compile.

Both run the per-device steps of `irevnet_jax.train.steps` unchanged, on the
local devices of every process, with the device axis named `steps.AXIS`:

- `PmapBackend` (the default, `parallel='pmap'`): `jax.pmap`; the state is
  replicated with a leading axis of one copy per local device.
- `ShardMapBackend` (`parallel='shard_map'`): `jax.jit` of `jax.shard_map` over a
  1-D mesh of all devices, with `check_vma=False`. That flag gives shard_map
  pmap's semantics: autodiff does not sum the gradients of replicated
  parameters over the devices by itself (with the default `check_vma=True` it
  does, and the step's own mean would then leave them N times too large). The
  state is one replicated global array per leaf.

Both compile with `compiler_options.for_platform` of their devices' platform (on
CPU: keep the engine's optimization barriers, so the CPU program fuses as the engine
intends; results do not depend on it).

Each process hands its own rows of the global batch (B / processes, ...) to
`prefetch`, which puts them on the devices two batches ahead of the step.
"""
import collections
import itertools
import math
from typing import Callable, Iterable, Iterator, Sequence

from flax import jax_utils
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from irevnet_jax.errors import UserError
from irevnet_jax.model import compiler_options
from irevnet_jax.train.steps import AXIS

PREFETCH = 2   # batches on the devices ahead of the step: overlaps a transfer with a step


MIN_BN_EXAMPLES = 8   # fewer examples per device make BatchNorm's batch statistics noise


def suggested_batch_size(value: int, num_devices: int, min_per_device: int = 1) -> int:
  """The multiple of `num_devices` nearest to `value` with at least `min_per_device`
  examples per device (ties: the larger), for an error's suggestion: batch_size=7 on 4
  devices suggests 32 (8 per device, below which the run warns), not 4."""
  per_device = max(min_per_device, 1, math.floor(value / num_devices + 0.5))
  return per_device * num_devices


def check_batch_size(field: str, value: int, num_devices: int, what: str,
                     min_per_device: int = 1):
  """A UserError naming `field` and a `suggested_batch_size` unless `value` is a positive
  multiple of `num_devices` (`what`: how the devices are counted, for the message); the
  one batch-versus-devices check of training and evaluation."""
  if value < 1 or value % num_devices:
    problem = 'is not positive' if value < 1 else f'is not divisible by the {num_devices} {what}'
    suggestion = suggested_batch_size(value, num_devices, min_per_device)
    raise UserError(f'{field}={value} {problem}; use a multiple of {num_devices}, '
                    f'e.g. {field}={suggestion}.')


def select_devices(num_devices: int):
  """The local devices to train on: all of them, or the first `num_devices`."""
  local = jax.local_devices()
  if num_devices <= 0:
    return local
  if jax.process_count() > 1:
    raise UserError(f'num_devices={num_devices} restricts devices in single-process runs '
                    f'only; use num_devices=0 with several processes.')
  if num_devices > len(local):
    raise UserError(f'num_devices={num_devices} but only {len(local)} local devices exist; '
                    f'use num_devices<={len(local)} (0 = all).')
  return local[:num_devices]


class CompiledPmap:
  """A `jax.pmap`ped function compiled with XLA options, which `jax.pmap` does not take:
  lowered and compiled on the first call with each set of input types. `lower` and
  `compiler_options` are there for callers that compile it themselves (benchmarks).

  With several processes the compiled program takes and returns global arrays (pmap
  converts the host-local ones itself only when it compiles them): converted here, so
  callers see pmap's host-local arrays either way."""

  def __init__(self, pmapped: Callable, options: dict):
    self._pmapped = pmapped
    self.compiler_options = options
    self._compiled = {}

  def lower(self, *args):
    return self._pmapped.lower(*args)

  def compiled(self, *args) -> jax.stages.Compiled:
    """The executable for arguments like `args`, compiled with the options on first use."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    key = (treedef, tuple(_type_key(leaf) for leaf in leaves))
    if key not in self._compiled:
      self._compiled[key] = self.lower(*args).compile(compiler_options=self.compiler_options)
    return self._compiled[key]

  def __call__(self, *args):
    compiled = self.compiled(*args)
    if jax.process_count() == 1:
      return compiled(*args)
    mesh = jax.tree_util.tree_leaves(compiled.input_shardings)[0].mesh
    spec = PartitionSpec(AXIS)
    outputs = compiled(*multihost_utils.host_local_array_to_global_array(args, mesh, spec))
    return multihost_utils.global_array_to_host_local_array(outputs, mesh, spec)


def _type_key(leaf):
  """What pmap compiles for: shape, dtype and weak type; not the sharding, so that the
  `jax.ShapeDtypeStruct`s of `PmapBackend.abstract` find the executable of the arrays."""
  aval = jax.typeof(leaf)
  return aval.shape, aval.dtype, aval.weak_type


def _options(devices) -> dict:
  return compiler_options.for_platform(devices[0].platform)


class PmapBackend:
  """`jax.pmap` over the local devices (of every process)."""
  name = 'pmap'

  def __init__(self, devices: Sequence):
    self.local_devices = list(devices)
    self.num_local = len(self.local_devices)
    self.num_global = self.num_local * jax.process_count()

  def _pmap_devices(self):
    """pmap's `devices`: ours with one process; None (every process's) with several."""
    return self.local_devices if jax.process_count() == 1 else None

  def compile(self, step: Callable, donate_state: bool = False):
    """step(state, batch) -> outputs, per device -> the pmapped step."""
    donate = (0,) if donate_state and jax.default_backend() != 'cpu' else ()
    pmapped = jax.pmap(step, axis_name=AXIS, devices=self._pmap_devices(),
                       donate_argnums=donate)
    return CompiledPmap(pmapped, _options(self.local_devices))

  def compiled(self, step: CompiledPmap, state, batch, fast: bool = False) -> jax.stages.Compiled:
    """The executable of `step` (from `compile`) for `state` / `batch` like `abstract`'s;
    the one training then runs (compiled once), or with `fast` one for its memory analysis
    only (`compiler_options.NO_BACKEND_OPTIMIZATION`: the same buffer plan)."""
    if jax.process_count() > 1:   # pmap lowers several processes' steps from arrays only
      state, batch = jax.tree_util.tree_map(
          lambda s: jax.device_put(np.zeros(s.shape, s.dtype), s.sharding), (state, batch))
    if fast:
      return step.lower(state, batch).compile(
          compiler_options={**step.compiler_options, **compiler_options.NO_BACKEND_OPTIMIZATION})
    return step.compiled(state, batch)

  def abstract(self, state_shapes, local_batch_shapes):
    """(state, batch) `jax.ShapeDtypeStruct`s laid out as `put_state` / `prefetch` lay out
    host trees of these shapes (batch: this process's rows)."""
    local = NamedSharding(Mesh(np.array(self.local_devices), (AXIS,)), PartitionSpec(AXIS))

    def stacked(shape, dtype):   # one row per local device, as pmap's host-local arrays
      return jax.ShapeDtypeStruct((self.num_local, *shape), dtype, sharding=local)

    state = jax.tree_util.tree_map(lambda s: stacked(s.shape, s.dtype), state_shapes)
    batch = jax.tree_util.tree_map(
        lambda s: stacked((s.shape[0] // self.num_local, *s.shape[1:]), s.dtype),
        local_batch_shapes)
    return state, batch

  def put_state(self, host_state):
    """Host tree -> one copy per local device, laid out as pmap's own outputs are (a state
    from `flax.jax_utils.replicate` has another sharding, and the step would compile twice:
    once for it and once for the state that the first step returns)."""
    broadcast = jax.pmap(lambda _, tree: tree, in_axes=(0, None), axis_name=AXIS,
                         devices=self._pmap_devices())
    return broadcast(np.arange(self.num_local), host_state)

  def to_host(self, tree):
    """Replicated device tree (the state or a step's outputs) -> host numpy (one copy), in
    one batched fetch (every leaf's transfer starts before any is awaited)."""
    shards = jax.tree_util.tree_map(lambda x: x.addressable_shards[0].data, tree)
    return jax.tree_util.tree_map(lambda x: x[0], jax.device_get(shards))

  def _split(self, batch):
    """{(B_local, ...)} -> {(local devices, B_local / local devices, ...)}."""
    return jax.tree_util.tree_map(
        lambda a: a.reshape(self.num_local, -1, *a.shape[1:]), batch)

  def put_batch(self, batch):
    return next(self.prefetch([batch], size=1))

  def prefetch(self, batches: Iterable[dict], size: int = PREFETCH) -> Iterator:
    return jax_utils.prefetch_to_device(map(self._split, batches), size, self.local_devices)


class ShardMapBackend:
  """`jax.jit` + `jax.shard_map` over a 1-D mesh of the devices of every process."""
  name = 'shard_map'

  def __init__(self, devices: Sequence):
    self.local_devices = list(devices)
    self.num_local = len(self.local_devices)
    self.num_global = self.num_local * jax.process_count()
    mesh_devices = self.local_devices if jax.process_count() == 1 else jax.devices()
    self.mesh = Mesh(np.array(mesh_devices), (AXIS,))
    self._replicated = NamedSharding(self.mesh, PartitionSpec())
    self._batch_sharding = NamedSharding(self.mesh, PartitionSpec(AXIS))

  def compile(self, step: Callable, donate_state: bool = False):
    spec = PartitionSpec()
    sharded = jax.shard_map(step, mesh=self.mesh, in_specs=(spec, PartitionSpec(AXIS)),
                            out_specs=spec, check_vma=False)
    donate = (0,) if donate_state and jax.default_backend() != 'cpu' else ()
    return jax.jit(sharded, donate_argnums=donate,
                   compiler_options=_options(self.local_devices))

  def compiled(self, step, state, batch, fast: bool = False) -> jax.stages.Compiled:
    """As `PmapBackend.compiled`; training's first call compiles again (or loads the
    executable from JAX's compilation cache)."""
    lowered = step.lower(state, batch)
    if fast:
      return lowered.compile(compiler_options={**_options(self.local_devices),
                                               **compiler_options.NO_BACKEND_OPTIMIZATION})
    return lowered.compile()

  def abstract(self, state_shapes, local_batch_shapes):
    """As `PmapBackend.abstract`: global arrays, the state replicated, the batch split."""
    count = jax.process_count()
    state = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self._replicated),
        state_shapes)
    batch = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct((s.shape[0] * count, *s.shape[1:]), s.dtype,
                                       sharding=self._batch_sharding), local_batch_shapes)
    return state, batch

  def put_state(self, host_state):
    def put(x):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, self._replicated, lambda index: x[index])
    return jax.tree_util.tree_map(put, host_state)

  def to_host(self, tree):
    return jax.device_get(jax.tree_util.tree_map(lambda x: x.addressable_shards[0].data, tree))

  def put_batch(self, batch):
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(self._batch_sharding, np.asarray(a)),
        batch)

  def prefetch(self, batches: Iterable[dict], size: int = PREFETCH) -> Iterator:
    queue = collections.deque()
    batches = iter(batches)

    def enqueue(n):
      for batch in itertools.islice(batches, n):
        queue.append(self.put_batch(batch))

    enqueue(size)
    while queue:
      yield queue.popleft()
      enqueue(1)


BACKENDS = {'pmap': PmapBackend, 'shard_map': ShardMapBackend}


def make_backend(name: str, devices: Sequence):
  return BACKENDS[name](devices)
