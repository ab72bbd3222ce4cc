"""Training speed per backprop mode: compile time, step time, images/s, memory, largest batch.

    python -m benchmarks.speed                                   # CPU: cifar10, 3 blocks/stage, batch 32
    python -m benchmarks.speed --models=bijective_released --dtypes=bfloat16 --batch=max
    python -m benchmarks.speed --suite=gpu --budget_s=420        # what benchmarks/gpu.sh runs

A step is `benchmarks.common.make_train_step` (SGD momentum, cross-entropy,
train-mode BN and dropout) on a synthetic batch already on the device.
--batch=max finds the largest batch that fits in the device memory from XLA's
compiled memory analysis: one compile at a probe batch gives bytes per image,
a second compile at the estimate confirms it (and a run that still runs out of
memory steps down). Compilation never allocates, so the probe is free of OOMs.
"""
import argparse
import time

import jax

from benchmarks import common, inversion, memory

MODES = ('autodiff', 'remat', 'reversible')
SAFETY = 0.92   # share of the allocator's limit a step may plan to use (fragmentation)


def round_batch(batch: int) -> int:
  """Down to a multiple of 64 (>= 512), 8 (>= 16) or 1: shapes that suit GPU kernels."""
  for multiple in (64, 8):
    if batch >= 8 * multiple:
      return batch // multiple * multiple
  return max(1, batch)


# Probe compiles only feed the memory estimate: skip the GPU's convolution autotuning.
PROBE_OPTIONS = {'xla_gpu_autotune_level': 0}


def fit_batch(net, limit_bytes: int, probe: int, cap: int):
  """(compiled step at the largest batch <= cap that fits in limit_bytes, batch, estimate).

  A probe compile gives the bytes per image: its temporaries minus the gradient
  buffers (as large as the parameters), over the probe batch. A second compile
  at the batch that this predicts confirms it (or steps down) and, with the
  probe, gives the two-point linear estimate of what would fit without the cap.
  """
  probed = common.compile_step(net, probe, PROBE_OPTIONS)
  while probed.peak_bytes > limit_bytes and probe > 1:
    probe //= 2
    probed = common.compile_step(net, probe, PROBE_OPTIONS)
  if probed.peak_bytes > limit_bytes:
    raise MemoryError(f'batch 1 needs {probed.peak_bytes / common.GIB:.2f} GiB, '
                      f'more than the {limit_bytes / common.GIB:.2f} GiB planned with')
  fixed = probed.peak_bytes - max(probed.temp_bytes - probed.param_bytes, probed.temp_bytes // 2)
  slope = (probed.peak_bytes - fixed) / probe
  for _ in range(3):
    batch = round_batch(min(cap, int((limit_bytes - fixed) // slope)))
    compiled = common.compile_step(net, batch)
    if batch != probe:   # the two-point fit through the probe and this compile
      slope = max(1.0, (compiled.peak_bytes - probed.peak_bytes) / (batch - probe))
      fixed = compiled.peak_bytes - slope * batch
    if compiled.peak_bytes <= limit_bytes or batch == 1:
      return compiled, batch, int((limit_bytes - fixed) // slope)
  raise MemoryError(f'no batch found that fits in {limit_bytes / common.GIB:.2f} GiB')


_STATE_CACHE = {}


def _initial_state(key, net):
  """A fresh training state on the host, made once per layout (it is the same in every mode)."""
  if key not in _STATE_CACHE:
    init_state, _ = common.make_train_step(net)
    x, _ = common.synthetic_batch(net, 1)
    _STATE_CACHE[key] = jax.device_get(init_state(jax.random.PRNGKey(0), x))
  return _STATE_CACHE[key]


def run_entry(model: str, dtype: str, mode: str, batch, smoke=False, limit_bytes=None,
              probe=None, cap=None, min_seconds=2.0, blocks=None):
  """One row: compile, (find the batch,) time; returns the row dict."""
  overrides = {'backprop': mode}
  if blocks:
    overrides['blocks'] = blocks
  config = common.with_dtype(common.model_config(model, smoke=smoke, **overrides), dtype)
  if mode not in _modes_of(config):
    return None
  net = common.build(config)
  start = time.perf_counter()
  estimate = None
  if batch == 'max':
    probe = min(cap or 4096, probe or (256 if net.input_shape[0] <= 64 else 32))
    compiled, size, estimate = fit_batch(net, limit_bytes, probe, cap or 4096)
  else:
    size = int(batch)
    compiled = common.compile_step(net, size)
  state = _initial_state((model, smoke, blocks), net)
  for _ in range(4):   # the allocator may still run out near the limit: step down
    try:
      seconds = common.time_steps(net, compiled, state, size, min_seconds=min_seconds)
      break
    except Exception as e:   # noqa: BLE001  (XlaRuntimeError has no stable import path)
      if not common.is_out_of_memory(e) or size <= 1:
        raise
      size = round_batch(int(size * 0.85))
      compiled = common.compile_step(net, size)
  else:
    raise MemoryError(f'{model} {dtype} {mode}: out of memory down to batch {size}')
  return {'model': model, 'dtype': dtype, 'precision': config.precision, 'mode': mode,
          'batch': size, 'max_batch': estimate, 'compile_s': compiled.compile_s,
          'step_ms': 1e3 * seconds, 'img_s': size / seconds,
          'peak_gib': compiled.peak_bytes / common.GIB, 'total_s': time.perf_counter() - start}


def _modes_of(config):
  if config.get('arch', 'irevnet') == 'resnet':
    return ('autodiff', 'remat')
  return MODES


COLUMNS = [('model', 'model', ''), ('dtype', 'dtype', ''), ('precision', 'precision', ''),
           ('mode', 'mode', ''), ('batch', 'batch', 'd'), ('max_batch', 'max batch (est)', 'd'),
           ('compile_s', 'compile s', '.1f'), ('step_ms', 'ms/step', '.1f'),
           ('img_s', 'images/s', '.1f'), ('peak_gib', 'peak GiB', '.2f')]


def gpu_plan(smoke: bool):
  """The GPU suite, most important first: (kind, arguments) pairs."""
  bf16, f32 = 'bfloat16', 'float32'
  plan = [('speed', ('bijective_released', bf16, 'reversible')),
          ('speed', ('bijective_released', bf16, 'autodiff')),
          ('inversion', ('bijective_released',)),
          ('speed', ('cifar10', bf16, 'reversible')),
          ('speed', ('cifar10', bf16, 'autodiff')),
          ('speed', ('bijective', bf16, 'reversible')),
          ('speed', ('injective', bf16, 'reversible')),
          ('speed', ('bijective_released', f32, 'reversible')),
          ('speed', ('cifar10', f32, 'reversible')),
          ('speed', ('bijective', f32, 'reversible')),
          ('speed', ('injective', f32, 'reversible')),
          ('speed', ('resnet50', bf16, 'autodiff')),
          ('speed', ('revnet56', bf16, 'reversible')),
          ('speed', ('bijective', bf16, 'autodiff')),
          ('speed', ('injective', bf16, 'autodiff')),
          ('inversion', ('cifar10',)),
          ('speed', ('bijective_released', bf16, 'remat')),
          ('speed', ('resnet50', f32, 'autodiff')),
          ('speed', ('revnet56', f32, 'reversible')),
          ('speed', ('bijective_released', f32, 'autodiff')),
          ('speed', ('cifar10', f32, 'autodiff')),
          ('memory', ('cifar10',))]
  return [(kind, args) for kind, args in plan
          if kind != 'speed' or common.available(args[0])]


SUITE_COLUMNS = [('what', 'what', ''), ('model', 'model', ''), ('setting', 'dtype/prec.', ''),
                 ('mode', 'mode', ''), ('batch', 'batch', ''), ('max_batch', 'max batch (est)', ''),
                 ('compile_s', 'compile s', '.1f'), ('step_ms', 'ms/step', '.1f'),
                 ('img_s', 'images/s', '.1f'), ('peak_gib', 'peak GiB', '.2f'),
                 ('result', 'result', '')]


def run_suite(budget_s: float, smoke: bool, memory_gib=None, min_seconds=2.0, cap=4096):
  """Runs `gpu_plan` until the time budget is spent; prints one table. Returns its rows."""
  deadline = time.perf_counter() + budget_s
  limit = common.device_memory_bytes(memory_gib)
  if limit is None:
    raise ValueError('this device reports no memory limit; pass --memory_gib (e.g. 2 on CPU)')
  limit = int(limit * SAFETY)
  print(f'suite on {common.device_name()}, jax {jax.__version__}, planning with '
        f'{limit / common.GIB:.1f} GiB, budget {budget_s:.0f} s', flush=True)
  rows, last_cost = [], {}
  for kind, args in gpu_plan(smoke):
    left = deadline - time.perf_counter()
    guess = last_cost.get(args[0], 20.0 if smoke else 60.0)
    if left < guess:
      rows.append({'what': kind, 'model': args[0], 'result': f'skipped: {left:.0f} s left'})
      continue
    started = time.perf_counter()
    try:
      new_rows = _suite_rows(kind, args, smoke, limit, min_seconds, cap)
    except Exception as e:   # noqa: BLE001  one failure must not lose the other rows
      new_rows = [{'what': kind, 'model': args[0], 'result': f'error: {type(e).__name__}: '
                                                            f'{str(e).splitlines()[0][:80]}'}]
    rows += new_rows
    last_cost[args[0]] = time.perf_counter() - started
    print(f'[{time.perf_counter() - deadline + budget_s:4.0f} s] {kind} {" ".join(args)} '
          f'({last_cost[args[0]]:.0f} s)', flush=True)
    for row in new_rows:   # each row as soon as it is known, in case the run is cut short
      print('    ' + ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                               for k, v in row.items() if k not in ('what', 'total_s')),
            flush=True)
  print(common.format_table(rows, SUITE_COLUMNS))
  return rows


def _suite_rows(kind, args, smoke, limit, min_seconds, cap):
  if kind == 'speed':
    model, dtype, mode = args
    row = run_entry(model, dtype, mode, 'max', smoke, limit, min_seconds=min_seconds, cap=cap)
    if row is None:
      return []
    row.update(what='train', setting=f'{dtype}/{row.pop("precision")}')
    return [row]
  if kind == 'inversion':
    return [{'what': 'invert', 'model': r['model'], 'setting': r['setting'], 'batch': r['batch'],
             'result': f'rel. error {r["rel_error"]:.2e}'}
            for r in inversion.measure(args[0], 8, smoke=smoke, report=lambda _: None)]
  if kind == 'memory':
    rows = memory.measure(args[0], 64, (3, 3, 3), (1, 8),
                          modes=('autodiff', 'reversible'), smoke=smoke, report=lambda _: None)
    return [{'what': 'memory', 'model': r['model'], 'setting': r['dtype'], 'mode': r['mode'],
             'batch': r['batch'], 'compile_s': r['compile_s'],
             'result': f'{r["blocks"]} blocks: temp {r["temp_gib"]:.3f} GiB ({r["ratio"]:.2f}x)'}
            for r in rows]
  raise ValueError(kind)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--suite', default='', choices=['', 'gpu'],
                      help="'gpu': the whole GPU table of benchmarks/gpu.sh")
  parser.add_argument('--models', default='cifar10')
  parser.add_argument('--dtypes', default='float32')
  parser.add_argument('--modes', default=','.join(MODES))
  parser.add_argument('--batch', default='32', help="an integer, or 'max' (largest that fits)")
  parser.add_argument('--max_batch', type=int, default=4096, help='cap for --batch=max')
  parser.add_argument('--blocks', default='3,3,3',
                      help="blocks per stage (comma-separated), or 'preset' for the preset's")
  parser.add_argument('--memory_gib', type=float, default=None,
                      help='device memory to plan with where the device reports none (CPU)')
  parser.add_argument('--min_seconds', type=float, default=2.0, help='timing per row')
  parser.add_argument('--repeats', type=int, default=1,
                      help='time each row this often (interleaved) and keep the fastest')
  parser.add_argument('--budget_s', type=float, default=420.0, help='time budget of --suite')
  parser.add_argument('--smoke', action='store_true', help='shrunken models (CPU check)')
  args = parser.parse_args()

  if args.suite == 'gpu':
    run_suite(args.budget_s, args.smoke, args.memory_gib, args.min_seconds, args.max_batch)
    return
  limit = common.device_memory_bytes(args.memory_gib)
  if args.batch == 'max' and limit is None:
    parser.error('--batch=max needs --memory_gib on a device that reports no memory limit')
  blocks = None if args.blocks == 'preset' else tuple(int(b) for b in args.blocks.split(','))
  print(f'training speed on {common.device_name()}, jax {jax.__version__}', flush=True)
  best = {}
  for _ in range(args.repeats):
    for model in args.models.split(','):
      for dtype in args.dtypes.split(','):
        for mode in args.modes.split(','):
          row = run_entry(model, dtype, mode, args.batch, args.smoke,
                          limit and int(limit * SAFETY), cap=args.max_batch,
                          min_seconds=args.min_seconds, blocks=blocks)
          if row is None:
            continue
          key = (model, dtype, mode)
          if key not in best or row['step_ms'] < best[key]['step_ms']:
            best[key] = row
          print(f'  {model} {dtype} {mode}: {row["step_ms"]:.1f} ms/step at batch '
                f'{row["batch"]}', flush=True)
  rows = list(best.values())
  print(common.format_table(rows, COLUMNS))
  _print_ratios(rows)


def _print_ratios(rows):
  by_key = {(r['model'], r['dtype'], r['mode']): r for r in rows}
  for (model, dtype, mode), row in by_key.items():
    base = by_key.get((model, dtype, 'autodiff'))
    if base and mode != 'autodiff' and base['batch'] == row['batch']:
      print(f'{model} {dtype}: {mode} step time = {row["step_ms"] / base["step_ms"]:.2f}x autodiff')
    if base and mode != 'autodiff' and row.get('max_batch') and base.get('max_batch'):
      print(f'{model} {dtype}: {mode} fits {row["max_batch"] / base["max_batch"]:.1f}x '
            f'the batch of autodiff')


if __name__ == '__main__':
  main()
