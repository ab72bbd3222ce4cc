"""What the benchmarks share: configs by name, the runner's training step, tables.

Two training steps live here:

- `TrainStep` (speed.py, gpu.sh): the step a user's run compiles, built by
  `irevnet_jax.train.program.build_program` from an experiment config
  (experiments/configs/<name>.py) with the runner's precision policy
  (`train_dtype` 'auto' = bfloat16 on GPU/TPU, `train_precision`), its optimizer
  and schedule, synchronised BN and the parallel back end (pmap by default).
  Batches are the synthetic source's uint8 images, put on the device before
  timing and normalised there by the step, as in training.
- `make_train_step` / `compile_step`: a plain jitted SGD step of a model config,
  compiled from shapes alone (benchmarks/memory.py measures its memory).
"""
import dataclasses
import importlib
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

import irevnet_jax
from irevnet_jax.data import input_pipeline
from irevnet_jax.model import presets
from irevnet_jax.train import config as config_lib
from irevnet_jax.train import program as program_lib
from irevnet_jax.train import state as state_lib
from irevnet_jax.train import steps as steps_lib

IMAGENET_MODELS = ('bijective', 'bijective_released', 'injective')
BASELINES = ('resnet50', 'revnet56')
GIB = 2.0 ** 30


def _baseline_presets():
  """The baselines' preset functions by name, or {} before irevnet_jax.baselines exists."""
  try:
    from irevnet_jax import baselines
  except ImportError:
    return {}
  return dict(getattr(baselines, 'PRESETS', {}))


def model_config(name: str, smoke: bool = False, **overrides):
  """The model config of preset `name` (i-RevNet or baseline) with `overrides` applied.

  smoke=True shrinks it (fewer blocks, small images) but keeps its kind of layout,
  so a benchmark's logic runs on a CPU in seconds. A `blocks` override sets a
  baseline's `units`.
  """
  if name in presets.PRESETS:
    c = presets.PRESETS[name]()
  elif name in _baseline_presets():
    c = _baseline_presets()[name]()
  else:
    known = sorted(presets.PRESETS) + sorted(_baseline_presets())
    raise ValueError(f'Unknown model {name!r}; use one of {known}.')
  if smoke:
    c.update(_smoke_overrides(name, c))
  if 'blocks' in overrides and c.get('arch', 'irevnet') != 'irevnet':
    overrides['units'] = overrides.pop('blocks')   # a baseline counts its blocks as units
  c.update(overrides)
  return c


def available(name: str) -> bool:
  return name in presets.PRESETS or name in _baseline_presets()


def _smoke_overrides(name, c):
  if c.get('arch', 'irevnet') != 'irevnet':   # a baseline: small stem, one unit per stage
    return {'input_shape': (16, 16, 3), 'stem': 'small', 'stem_width': 16,
            'units': (1,) * len(c.units), 'widths': tuple(w // 8 for w in c.widths),
            'num_classes': 10}
  if name in IMAGENET_MODELS:                  # psi(2) stem and three stages at 32x32
    widths = (8, 32, 128) if name == 'injective' else (24, 96, 384)   # injective: pads 12 -> 16
    return {'input_shape': (32, 32, 3), 'init_ds': 2, 'blocks': (3, 3, 3),
            'strides': (c.strides[0], 2, 2), 'widths': widths, 'num_classes': 10}
  return {'input_shape': (16, 16, 3), 'blocks': (3,) * len(c.blocks)}


def with_dtype(config, dtype: str):
  """bfloat16 compute uses default-precision convolutions; float32 keeps the preset's.

  (benchmarks/memory.py; the runner's policy is `irevnet_jax.train.config.train_model_config`.)
  """
  c = config.copy_and_resolve_references()
  c.dtype = dtype
  if dtype == 'bfloat16':
    c.precision = 'default'
  return c


def synthetic_batch(net, batch_size: int, seed: int = 0):
  """(images (B, H, W, C) float32 in [0, 1), integer labels (B,)) on the default device."""
  kx, ky = jax.random.split(jax.random.PRNGKey(seed))
  x = jax.random.uniform(kx, (batch_size, *net.input_shape), jnp.float32)
  y = jax.random.randint(ky, (batch_size,), 0, net.arch.num_classes)
  return x, y


def make_train_step(net, learning_rate: float = 0.1):
  """(init_state(rng, x), step(state, x, y, key) -> (state, loss)), both jitted; step donates state.

  A plain SGD-momentum step of `net` as built (its dtype and precision), for
  benchmarks/memory.py; speed.py and gpu.sh time the runner's own step (`TrainStep`).
  """
  tx = optax.sgd(learning_rate, momentum=0.9)

  def init_state(rng, x):
    variables = net.init(rng, x[:1])
    return {'params': variables['params'], 'batch_stats': variables['batch_stats'],
            'opt_state': tx.init(variables['params'])}

  def step(state, x, y, key):
    def loss_fn(params):
      (logits, _), new = net.forward({'params': params, 'batch_stats': state['batch_stats']}, x,
                                     train=True, rngs={'dropout': key})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, new['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    return {'params': optax.apply_updates(state['params'], updates), 'batch_stats': batch_stats,
            'opt_state': opt_state}, loss

  return jax.jit(init_state), jax.jit(step, donate_argnums=0)


@dataclasses.dataclass
class Compiled:
  """A compiled training step and what XLA says about it."""
  fn: Callable
  compile_s: float
  temp_bytes: Optional[int]
  peak_bytes: Optional[int]   # arguments + temporaries + outputs not aliased to donated
                              # arguments; None where XLA gives no memory analysis
  param_bytes: int
  batch_size: int = 0


def compile_step(net, batch_size: int, compiler_options=None,
                 learning_rate: float = 0.1) -> Compiled:
  """Compiles one training step at `batch_size` from shapes alone (nothing is allocated)."""
  init_state, step = make_train_step(net, learning_rate)
  x = jax.ShapeDtypeStruct((batch_size, *net.input_shape), jnp.float32)
  y = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  state = jax.eval_shape(init_state, key, x)
  start = time.perf_counter()
  compiled = step.lower(state, x, y, key).compile(compiler_options=compiler_options)
  seconds = time.perf_counter() - start
  m = compiled.memory_analysis()
  peak = (m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
          - m.alias_size_in_bytes)
  param_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(state['params']))
  return Compiled(compiled, seconds, int(m.temp_size_in_bytes), int(peak), int(param_bytes),
                  batch_size)


# --- The runner's training step ---------------------------------------------------------


def experiment_config(name: str, *, batch_size: int, smoke: bool = False,
                      backprop: Optional[str] = None, train_dtype: str = 'auto',
                      blocks=None, parallel: str = 'pmap') -> ml_collections.ConfigDict:
  """experiments/configs/<name>.py as a user runs it, reading synthetic images instead.

  The model, optimizer, schedule and precision fields are the config's own;
  `train_dtype` ('auto' = bfloat16 on GPU/TPU, float32 on CPU), `backprop`,
  `blocks` (blocks per stage; a baseline's units) and `smoke` (a shrunken model,
  see `model_config`) override them.
  """
  config = importlib.import_module(f'experiments.configs.{name}').get_config()
  if smoke:
    config.model.update(_smoke_overrides(name, config.model))
  if blocks:
    field = 'blocks' if config.model.get('arch', 'irevnet') == 'irevnet' else 'units'
    config.model[field] = tuple(int(b) for b in blocks)
  if backprop:
    config.model.backprop = backprop
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
  if arch == 'irevnet':
    return presets.BACKPROP_MODES
  from irevnet_jax.baselines import presets as baseline_presets
  return baseline_presets.BACKPROP_MODES[arch]


def total_blocks(model_config) -> int:
  """Blocks (i-RevNet) or residual units (baselines) over all stages."""
  return sum(model_config.get('blocks', None) or model_config.get('units', ()))


def config_blocks(name: str) -> int:
  """`total_blocks` of experiments/configs/<name>.py as it stands (not shrunken)."""
  return total_blocks(importlib.import_module(f'experiments.configs.{name}').get_config().model)


def _memory_analysis(compiled):
  """(temp bytes, peak bytes) of a compiled executable, or (None, None) where XLA says nothing.

  `memory_analysis()` returns one record, a list of them (one per device) or None
  depending on the JAX version and back end.
  """
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001  (not implemented on some back ends)
    return None, None
  if isinstance(m, (list, tuple)):
    m = m[0] if m else None
  if m is None:
    return None, None
  peak = (m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
          - m.alias_size_in_bytes)
  return int(m.temp_size_in_bytes), int(peak)


_HOST_STATE = {}


class TrainStep:
  """The runner's compiled train step for one experiment config, on one device.

  `build_program` gives the step exactly as `experiments.main` runs it (the
  pmapped or jit+shard_map step of `irevnet_jax.train.steps.train_step`). It is
  compiled ahead of time here (`.lower(state, batch).compile()`), at any batch
  size, so that the compile time and XLA's memory analysis are known before a
  batch is run; the executable is the one a first call would compile.
  The train state lives on the device between calls (each step donates it on
  GPU/TPU, as in training); batches are uint8 images on the device.
  """

  def __init__(self, config, num_devices: int = 1, compiler_options=None):
    self.config = config
    self.compiler_options = compiler_options   # e.g. a lower optimisation level in tests
    self.source = input_pipeline.get_source(config.dataset, tuple(config.model.input_shape))
    normalization = steps_lib.Normalization(self.source.pixel_mean, self.source.pixel_std)
    devices = jax.local_devices()[:num_devices]
    self.program = program_lib.build_program(config, self.source.num_train_examples,
                                             normalization, devices)
    self.backend = self.program.backend
    self.train_dtype = config_lib.resolved_train_dtype(config)
    host = self._host_state()
    self.param_bytes = sum(a.size * a.dtype.itemsize
                           for a in jax.tree_util.tree_leaves(host['params']))
    self.state = None
    self.reset_state()

  def reset_state(self):
    """Puts a fresh train state on the device (after a failed step may have consumed it)."""
    self.state = None   # frees the old one first
    self.state = self.backend.put_state(self._host_state())

  def _host_state(self):
    """A fresh host train state; made once for the last layout asked for (it does not
    depend on the dtype or the backprop mode)."""
    model = self.config.model.copy_and_resolve_references()
    model.backprop = 'autodiff'
    key = model.to_json(sort_keys=True)
    if key not in _HOST_STATE:
      _HOST_STATE.clear()   # one at a time: the state of a 193M-parameter model is 1.5 GB
      _HOST_STATE[key] = state_lib.create_state(self.program.train_net, self.program.tx, 0)
    return _HOST_STATE[key]

  def batch(self, batch_size: int):
    """A uint8 synthetic batch {'image', 'label'} of `batch_size` images on the device(s)."""
    host = next(self.source.train_batches(batch_size, 0, 1, seed=0, start_step=0))
    return self.backend.put_batch(host)

  def compile(self, batch_size: int) -> Compiled:
    """The train step compiled for global batch `batch_size` (trace + lower + compile)."""
    batch = self.batch(batch_size)
    start = time.perf_counter()
    lowered = self.program.train_step.lower(self.state, batch)
    compiled = (lowered.compile(compiler_options=self.compiler_options)
                if self.compiler_options else lowered.compile())
    seconds = time.perf_counter() - start
    temp, peak = _memory_analysis(compiled)
    return Compiled(compiled, seconds, temp, peak, self.param_bytes, batch_size)

  def time(self, compiled: Compiled, min_seconds: float = 2.0, max_steps: int = 50,
           warmup: int = 2):
    """(seconds per step, final loss): the mean over steps dispatched back to back, as
    the training loop dispatches them, after `warmup` steps.

    About `min_seconds` of steps are timed (at least 3, at most `max_steps`); a loss
    that is not finite is returned as is for the caller to report.
    """
    batch = self.batch(compiled.batch_size)
    state, fn = self.state, compiled.fn
    for _ in range(warmup):
      state, metrics = fn(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    state, metrics = fn(state, batch)
    jax.block_until_ready(metrics)
    one = time.perf_counter() - start
    steps = int(min(max_steps, max(3, min_seconds // max(one, 1e-6))))
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = fn(state, batch)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - start) / steps
    self.state = state
    return seconds, float(self.backend.to_host(metrics)['loss'])


def device_memory_bytes(default_gib: Optional[float] = None) -> Optional[int]:
  """The allocator's limit on the first device, or `default_gib` where it reports none (CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'])
  return None if default_gib is None else int(default_gib * GIB)


def device_name() -> str:
  d = jax.devices()[0]
  return f'{d.platform}:{getattr(d, "device_kind", "")} x{jax.device_count()}'


def is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'out of memory' in text


def format_table(rows, columns, markdown: bool = False) -> str:
  """rows: list of dicts; columns: list of (key, header, format spec); None prints '-'.

  Numbers are right-aligned, text (spec '') left-aligned. markdown=True: a Markdown
  table (pipes around every row) that pastes into benchmarks/RESULTS.md.
  """
  cells = [[header for _, header, _ in columns]]
  for row in rows:
    line = []
    for key, _, spec in columns:
      value = row.get(key)
      line.append('-' if value is None else (format(value, spec) if spec else str(value)))
    cells.append(line)
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  text = [not spec for _, _, spec in columns]
  out = [' | '.join(c.ljust(w) if t else c.rjust(w) for c, w, t in zip(r, widths, text))
         for r in cells]
  if markdown:
    out = [f'| {line} |' for line in out]
    out.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
  else:
    out = [line.rstrip() for line in out]
    out.insert(1, '-+-'.join('-' * w for w in widths))
  return '\n'.join(out)


def build(config):
  return irevnet_jax.build(config)
