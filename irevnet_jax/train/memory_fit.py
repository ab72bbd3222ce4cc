"""Whether a run's train step fits in memory, known from the compiled step before it runs.

    prog, config = memory_fit.fitting_program(program.build_program(config, backend), config,
                                              local_batch)

The train step is compiled from the shapes of the state and batch (no data, no state)
and XLA's memory analysis says the bytes it needs per device: arguments + temporaries +
outputs not aliased to donated arguments. They are compared with the memory to plan
with (`available`): `device_memory_gib` when set, else 90% of the device's `bytes_limit`
(GPU/TPU) or of the host's available memory (CPU, where the local devices share it:
their bytes add up). A step that does not fit ends the run in one UserError that names
what fits: the largest batch (estimated from the compiled step), and for autodiff or remat
the memory-saving mode with its figure. `model.backprop='auto'` picks autodiff when it
fits, else the memory-saving mode (`saving_mode`: reversible, remat for ResNet), and logs
which and why. The executable compiled for the check is the one training runs (pmap; with
shard_map the first step loads it from the compilation cache); the other mode's figure is
compiled for its analysis only, with the block scans rolled (`_need_of_mode`).
"""
import math
from typing import NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp

from irevnet_jax.errors import UserError
from irevnet_jax.train import program as program_lib

GIB = 2 ** 30
PLAN_SHARE = 0.9   # of the reported memory: allocator fragmentation, the input pipeline


class Memory(NamedTuple):
  bytes: int   # what the train steps of all devices sharing it may use together
  what: str    # where the figure comes from, for messages


class Need(NamedTuple):
  """What one compiled train step needs: `bytes` (per device) at `per_device` examples;
  `fixed` + `per_example` * examples is the estimate at other batch sizes."""
  bytes: int
  per_device: int
  fixed: float
  per_example: float


def gib(num_bytes: float) -> str:
  """'1.16 GiB', '0.18 GiB', or '24.7 MiB' below 0.1 GiB."""
  if num_bytes >= GIB / 10:
    return f'{num_bytes / GIB:.2f} GiB'
  return f'{num_bytes / 2 ** 20:.1f} MiB'


def round_batch(batch: int) -> int:
  """Down to a multiple of 64 (>= 512), 8 (>= 64) or 1: shapes that suit GPU kernels."""
  multiple = 64 if batch >= 512 else 8 if batch >= 64 else 1
  return max(1, batch // multiple * multiple)


def host_available_bytes() -> Optional[int]:
  """MemAvailable of /proc/meminfo (Linux), None elsewhere."""
  try:
    with open('/proc/meminfo') as meminfo:
      for line in meminfo:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def available(config, device) -> Optional[Memory]:
  """The memory a train step may plan with on `device`'s memory; None when unknown."""
  override = config.get('device_memory_gib')
  if override is not None:
    return Memory(int(override * GIB), f'--config.device_memory_gib={override:g}')
  if device.platform == 'cpu':
    measured, what = host_available_bytes(), "the host's available {}"
  else:
    measured = (device.memory_stats() or {}).get('bytes_limit')
    what = f"the {device.platform.upper()}'s {{}} (bytes_limit)"
  if not measured:
    return None
  return Memory(int(PLAN_SHARE * measured), f'{PLAN_SHARE:.0%} of {what.format(gib(measured))}'
                                            f'; --config.device_memory_gib sets it')


def line_through(peak: int, temp: int, param_bytes: int, examples: int):
  """(bytes that do not grow with the batch, bytes per example) of a step compiled at
  `examples` per device, from its one memory analysis: of the temporaries, about the
  parameters' size is gradient buffers (fixed), at most half; the rest grows with the batch."""
  fixed = peak - max(temp - param_bytes, temp // 2)
  return fixed, max(1.0, (peak - fixed) / examples)


def temp_and_peak(compiled):
  """(temporary bytes, peak bytes) per device of a compiled program from XLA's memory
  analysis, (None, None) where it has none; peak = arguments + temporaries + outputs not
  aliased to donated arguments."""
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # noqa: BLE001  (not implemented on some back ends)
    analysis = None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if analysis is None:
    return None, None
  peak = (analysis.argument_size_in_bytes + analysis.temp_size_in_bytes
          + analysis.output_size_in_bytes - analysis.alias_size_in_bytes)
  return int(analysis.temp_size_in_bytes), int(peak)


def need(compiled, state_shapes, per_device: int) -> Optional[Need]:
  """The `Need` of a compiled train step (None where XLA has no memory analysis)."""
  temp, peak = temp_and_peak(compiled)
  if peak is None:
    return None
  param_bytes = sum(s.size * s.dtype.itemsize
                    for s in jax.tree_util.tree_leaves(state_shapes['params']))
  return Need(peak, per_device, *line_through(peak, temp, param_bytes, per_device))


def saving_mode(model_config) -> str:
  """The memory-saving backprop of `model.arch`: reversible, remat where blocks do not invert."""
  return 'remat' if model_config.get('arch', 'irevnet') == 'resnet' else 'reversible'


def _sharing(devices) -> int:
  """How many of `devices` share one memory: the host's on CPU, each its own elsewhere."""
  return len(devices) if devices[0].platform == 'cpu' else 1


def need_of_program(prog, local_batch: int, fast: bool = False) -> Optional[Need]:
  """The `Need` of `prog`'s train step at `local_batch` examples per process, compiled from
  shapes (`fast`: for its memory analysis only; else the executable that training runs)."""
  backend, shapes = prog.backend, prog.state_shapes
  batch = {'image': jax.ShapeDtypeStruct((local_batch, *prog.input_shape), jnp.uint8),
           'label': jax.ShapeDtypeStruct((local_batch,), jnp.int32)}
  state, batch = backend.abstract(shapes, batch)
  compiled = backend.compiled(prog.train_step, state, batch, fast=fast)
  return need(compiled, shapes, local_batch // backend.num_local)


def _need_of_mode(config, backend, local_batch: int, mode: str) -> Optional[Need]:
  """Of `config` in backprop `mode`, compiled for the analysis only, with the block scans
  rolled (as on GPU/TPU): unrolled, as on CPU, the bijective ImageNet model's reversible
  step compiles in 271 s instead of 19 s, and needs 2.27 GiB at batch 256 instead of
  2.03 (the CIFAR-10 model at 64: 0.18 GiB instead of 0.17), so it is 'about' there."""
  config = program_lib.with_backprop(config, mode)
  if 'block_scan' in config.model:
    with config.unlocked():
      config.model.block_scan = 'rolled'
  return need_of_program(program_lib.build_program(config, backend), local_batch, fast=True)


def fitting_program(prog, config, local_batch: int):
  """(the `program.Program` to train, its config: model.backprop 'auto' resolved) once the
  compiled train step of `prog` (`program.build_program(config, ...)`) is known to fit; a
  UserError naming what fits when it does not. `local_batch`: this process's examples
  per step."""
  devices = prog.backend.local_devices
  memory, share = available(config, devices[0]), _sharing(devices)
  auto = config.model.backprop == program_lib.AUTO
  if auto:
    config = program_lib.with_backprop(config, 'autodiff')
  needed = need_of_program(prog, local_batch) if memory else None
  if needed is None:   # no figure of the memory or no memory analysis: nothing to check
    return prog, config
  fits = lambda n: n.bytes * share <= memory.bytes
  if fits(needed) and not auto:
    return prog, config
  saving = saving_mode(config.model)
  other = (_need_of_mode(config, prog.backend, local_batch, saving)
           if config.model.backprop != saving else None)
  if auto:
    chosen = 'autodiff' if fits(needed) or other is None else saving
    logging.info('model.backprop=auto: %s (autodiff needs %s, %s about %s, of the %s planned '
                 'with: %s).', chosen, gib(needed.bytes * share), saving,
                 gib(other.bytes * share) if other else '?', gib(memory.bytes), memory.what)
    if chosen == 'autodiff':
      return prog, config
    config = program_lib.with_backprop(config, saving)
    prog = program_lib.build_program(config, prog.backend)
    needed, other = need_of_program(prog, local_batch), None
    if needed is None or fits(needed):
      return prog, config
  raise UserError(_does_not_fit(config, needed, other, saving, memory, share,
                                len(devices) * jax.process_count()))


def _does_not_fit(config, needed: Need, other: Optional[Need], saving: str, memory: Memory,
                  share: int, num_global: int) -> str:
  """The one line of a train step that does not fit: what it needs, what fits instead."""
  total = lambda n: gib(n * share)
  say = (f'batch_size={config.batch_size} with model.backprop={config.model.backprop} needs '
         f'{total(needed.bytes)}'
         + (f' ({share} CPU devices x {gib(needed.bytes)})' if share > 1 else '')
         + f', more than the {gib(memory.bytes)} planned with ({memory.what})')
  per_device = math.floor((memory.bytes / share - needed.fixed) / needed.per_example)
  options = []
  if per_device >= 1:
    per_device = round_batch(per_device * num_global) // num_global or per_device
    options.append(f'--config.batch_size={per_device * num_global} (about '
                   f'{total(needed.fixed + per_device * needed.per_example)}, estimated)')
  else:
    say += (f'; even one example per device needs about '
            f'{total(needed.fixed + needed.per_example)}')
  if other is not None:
    fits = other.bytes * share <= memory.bytes
    options.append(f'--config.model.backprop={saving} (about {total(other.bytes)} at '
                   f'batch_size={config.batch_size}' + ('' if fits else ', too much as well')
                   + ')')
  if not options:
    return f'{say}: use a smaller model or a device with more memory.'
  return f'{say}: use ' + ' or '.join(options) + '.'
