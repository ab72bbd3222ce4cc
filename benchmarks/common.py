"""What the benchmarks share: experiment configs by name and `TrainStep`, the one
way they build and time a train step: the one `experiments.main` compiles, compiled ahead
of time so that compile seconds and XLA's memory analysis are known before a batch runs."""
import dataclasses
import importlib
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from irevnet_jax.baselines import presets as baseline_presets
from irevnet_jax.model import compiler_options, precision, presets
from irevnet_jax.train import config as config_lib
from irevnet_jax.train import memory_fit, parallel
from irevnet_jax.train import program as program_lib
from irevnet_jax.train import state as state_lib

IMAGENET_MODELS = ('bijective', 'bijective_released', 'injective')
GIB = 2.0 ** 30


def _smoke_overrides(name, c):
  """A layout of the same kind that a CPU runs a benchmark's logic with in seconds."""
  if c.get('arch', 'irevnet') != 'irevnet':   # a baseline: small stem, one unit per stage
    return {'input_shape': (16, 16, 3), 'stem': 'small', 'stem_width': 16,
            'units': (1,) * len(c.units), 'widths': tuple(w // 8 for w in c.widths),
            'num_classes': 10}
  if name in IMAGENET_MODELS:                  # psi(2) stem and three stages at 32x32
    widths = (8, 32, 128) if name == 'injective' else (24, 96, 384)   # injective: pads 12 -> 16
    return {'input_shape': (32, 32, 3), 'init_ds': 2, 'blocks': (3, 3, 3),
            'strides': (c.strides[0], 2, 2), 'widths': widths, 'num_classes': 10}
  return {'input_shape': (16, 16, 3), 'blocks': (3,) * len(c.blocks)}


def experiment_config(name: str, *, batch_size: int, smoke: bool = False,
                      backprop: Optional[str] = None, train_dtype: str = 'auto',
                      blocks=None, parallel: str = 'pmap',
                      real_data: bool = False) -> ml_collections.ConfigDict:
  """experiments/configs/<name>.py on synthetic images (unless `real_data`); the other
  arguments override its fields (`blocks` per stage: a baseline's units)."""
  config = importlib.import_module(f'experiments.configs.{name}').get_config()
  if smoke:
    config.model.update(_smoke_overrides(name, config.model))
  if blocks:
    field = 'blocks' if config.model.get('arch', 'irevnet') == 'irevnet' else 'units'
    config.model[field] = tuple(int(b) for b in blocks)
  if backprop:
    config.model.backprop = backprop
  if not real_data:
    config.dataset = ml_collections.ConfigDict(
        {'name': 'synthetic', 'num_classes': int(config.model.num_classes)})
  config.batch_size = int(batch_size)
  config.train_dtype = train_dtype
  config.parallel = parallel
  config_lib.check_config(config)
  return config


def backprop_modes(model_config):
  """The backprop modes that a model config's architecture supports."""
  arch = model_config.get('arch', 'irevnet')
  return presets.BACKPROP_MODES if arch == 'irevnet' else baseline_presets.BACKPROP_MODES[arch]


def total_blocks(model_config) -> int:
  """Blocks (i-RevNet) or residual units (baselines) over all stages."""
  return sum(model_config.get('blocks', None) or model_config.get('units', ()))


def config_blocks(name: str) -> int:
  """`total_blocks` of experiments/configs/<name>.py as it stands (not shrunken)."""
  return total_blocks(importlib.import_module(f'experiments.configs.{name}').get_config().model)


def runner_program(config, num_devices: int = 1):
  """(source, `irevnet_jax.train.program.Program`) of `config` on `num_devices` devices."""
  prog = program_lib.build_program(
      config, parallel.make_backend(config.parallel, jax.local_devices()[:num_devices]))
  return prog.source, prog


def synthetic_batch(net, batch_size: int, seed: int = 0):
  """(images (B, H, W, C) float32 in [0, 1), integer labels (B,)) on the default device."""
  kx, ky = jax.random.split(jax.random.PRNGKey(seed))
  x = jax.random.uniform(kx, (batch_size, *net.input_shape), jnp.float32)
  return x, jax.random.randint(ky, (batch_size,), 0, net.arch.num_classes)


@dataclasses.dataclass
class Compiled:
  """A compiled training step and what XLA says about it (None where it says nothing)."""
  fn: Callable
  compile_s: float
  temp_bytes: Optional[int]
  peak_bytes: Optional[int]   # arguments + temporaries + outputs not aliased to donated ones
  param_bytes: int
  batch_size: int = 0


_HOST_STATE = {}   # one host train state (of the last layout): a 193M-parameter one is 1.5 GB


class TrainStep:
  """The runner's train step of an experiment config on `num_devices` local devices; its
  state lives on the device(s), donated by each step on GPU/TPU as in training."""

  def __init__(self, config, num_devices: int = 1, compiler_options=None):
    self.config = config
    self.compiler_options = compiler_options   # e.g. a lower optimisation level in tests
    self.source, self.program = runner_program(config, num_devices)
    self.backend = self.program.backend
    self.train_dtype = precision.resolved_train_dtype(config.train_dtype)
    self.param_bytes = sum(a.size * a.dtype.itemsize
                           for a in jax.tree_util.tree_leaves(self._host_state()['params']))
    self.state = self.backend.put_state(self._host_state())

  def _host_state(self):
    model = self.config.model.copy_and_resolve_references()
    model.backprop = 'autodiff'   # the state does not depend on the mode or the dtype
    key = model.to_json(sort_keys=True)
    if key not in _HOST_STATE:
      _HOST_STATE.clear()
      _HOST_STATE[key] = state_lib.create_state(self.program.train_net, self.program.tx, 0)
    return _HOST_STATE[key]

  def _host_batches(self, batch_size: int):
    return self.source.train_batches(batch_size, 0, 1, seed=0, start_step=0)

  def batch(self, batch_size: int):
    """One batch {'image' uint8, 'label'} of the source on the device(s)."""
    return self.backend.put_batch(next(self._host_batches(batch_size)))

  def compile(self, batch_size: int) -> Compiled:
    """The executable a first call at global batch `batch_size` compiles, and its numbers."""
    batch = self.batch(batch_size)
    start = time.perf_counter()
    options = {**compiler_options.for_platform(self.backend.local_devices[0].platform),
               **(self.compiler_options or {})}   # the runner's, then the caller's
    compiled = self.program.train_step.lower(self.state, batch).compile(
        compiler_options=options)
    seconds = time.perf_counter() - start
    return Compiled(compiled, seconds, *memory_fit.temp_and_peak(compiled), self.param_bytes,
                    batch_size)

  def time(self, compiled: Compiled, min_seconds: float = 2.0, max_steps: int = 50,
           warmup: int = 2, feed: bool = False):
    """(seconds per step, final loss) of about `min_seconds` of steps (3 to `max_steps`)
    dispatched back to back after `warmup`, on one batch kept on the device or (`feed`)
    the source's next batch per step, put on the device two ahead as the loop does."""
    if feed:
      batches = self.backend.prefetch(self._host_batches(compiled.batch_size))
    else:
      resident = self.batch(compiled.batch_size)
      batches = iter(lambda: resident, None)
    state, fn = self.state, compiled.fn

    def run(steps):
      nonlocal state
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = fn(state, next(batches))
      jax.block_until_ready((state, metrics))
      return (time.perf_counter() - start) / steps, metrics

    if warmup:
      run(warmup)
    one, _ = run(1)
    seconds, metrics = run(int(min(max_steps, max(3, min_seconds // max(one, 1e-6)))))
    self.state = state
    return seconds, float(self.backend.to_host(metrics)['loss'])


def device_memory_bytes(default_gib: Optional[float] = None) -> Optional[int]:
  """The allocator's limit on the first device, or `default_gib` where it reports none (CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'])
  return None if default_gib is None else int(default_gib * GIB)


def device_name() -> str:
  return f'{jax.devices()[0].platform}:{jax.devices()[0].device_kind} x{jax.device_count()}'


def is_out_of_memory(error: Exception) -> bool:
  return any(s in str(error) for s in ('RESOURCE_EXHAUSTED', 'Out of memory', 'out of memory'))
