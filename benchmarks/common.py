"""What the benchmarks share: model configs by name, a synthetic training step, tables.

The training step is the one a user runs (SGD with momentum, softmax cross-entropy,
train-mode BN and dropout), jitted with the state donated, on a synthetic batch
that lives on the device: no TensorFlow, no input pipeline.
"""
import dataclasses
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

import irevnet_jax
from irevnet_jax import presets

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
  """bfloat16 compute uses default-precision convolutions; float32 keeps the preset's."""
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
  """(init_state(rng, x), step(state, x, y, key) -> (state, loss)), both jitted; step donates state."""
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
  temp_bytes: int
  peak_bytes: int      # arguments + temporaries + outputs not aliased to donated arguments
  param_bytes: int


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
  return Compiled(compiled, seconds, int(m.temp_size_in_bytes), int(peak), int(param_bytes))


def time_steps(net, compiled: Compiled, state, batch_size: int, min_seconds: float = 2.0,
               max_steps: int = 20, warmup: int = 2) -> float:
  """Seconds per training step (mean over at least `min_seconds`, after `warmup` steps).

  `state` (from `make_train_step`'s init_state, on the host or a device) is copied
  to the device first: the step donates it.
  """
  x, y = synthetic_batch(net, batch_size)
  state = jax.tree_util.tree_map(jnp.array, state)
  key = jax.random.PRNGKey(1)
  for _ in range(warmup):
    state, loss = compiled.fn(state, x, y, key)
  jax.block_until_ready(loss)
  steps, start = 0, time.perf_counter()
  while steps < max_steps and (steps < 3 or time.perf_counter() - start < min_seconds):
    state, loss = compiled.fn(state, x, y, key)
    jax.block_until_ready(loss)
    steps += 1
  seconds = (time.perf_counter() - start) / steps
  if not bool(jnp.isfinite(loss)):
    raise FloatingPointError(f'non-finite loss {float(loss)} while timing')
  return seconds


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


def format_table(rows, columns) -> str:
  """rows: list of dicts; columns: list of (key, header, format spec)."""
  cells = [[header for _, header, _ in columns]]
  for row in rows:
    line = []
    for key, _, spec in columns:
      value = row.get(key)
      line.append('-' if value is None else (format(value, spec) if spec else str(value)))
    cells.append(line)
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  out = [' | '.join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
         for r in cells]
  out.insert(1, '-+-'.join('-' * w for w in widths))
  return '\n'.join(out)


def build(config):
  return irevnet_jax.build(config)
