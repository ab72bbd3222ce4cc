"""Training speed of the runner's step: compile time, images/s, memory, largest batch.

    python -m benchmarks.speed                      # CPU: cifar10, 3 blocks/stage, batch 32
    python -m benchmarks.speed --models=bijective_released --dtypes=bfloat16 --blocks=preset \\
        --batch=max
    python -m benchmarks.speed --suite=gpu          # the table of benchmarks/gpu.sh

What is timed: the train step that `python -m experiments.main` compiles for
experiments/configs/<model>.py (`benchmarks.common.TrainStep`): the config's
optimizer and schedule, its precision policy (`train_dtype` 'auto' = bfloat16 on
GPU/TPU, `train_precision` 'default'), synchronised BN, dropout, the pmap back end
on one device; uint8 synthetic images, put on the device beforehand and
normalised there by the step. Steps are dispatched back to back, as the loop does.

The largest batch comes from XLA's compiled memory analysis, which needs no
run and cannot run out of memory: a compile at one batch gives the bytes the
step plans to hold (arguments, temporaries, outputs), split into a part that
grows with the batch (activations) and one that does not (state, gradients);
a compile at the batch this predicts confirms it (or steps down, refitting the
line through both compiles). The step must also run: a batch that still runs
out of memory steps down by 15%.

Table columns (train rows):
  model            experiments/configs/<model>.py ('smoke': shrunken layout)
  blocks           blocks (i-RevNet) or residual units (baselines) over all stages
  mode             backprop: autodiff | reversible | remat
  dtype/prec.      compute dtype and convolution precision of training (parameters,
                   optimizer state and coupling streams are float32 in every case)
  batch            global batch of the timed step
  max batch (est)  largest batch estimated to fit in the memory planned with (the
                   device's limit x SAFETY), from the compile(s) of this row
  compile s        trace + lower + compile of the step, autotuning included: what the
                   first step of a run waits
  ms/step          mean wall time of a step, dispatched back to back
  images/s         batch / step time
  peak GiB         XLA's planned device memory of the step (arguments + temporaries +
                   outputs not aliased to the donated state)
  note             why the batch differs from the one asked for, errors, skips
Inversion rows (suite only): dtype/prec. is 'forward>inverse' ('float32/highest' alone:
both ways); compile s is the compile and run of forward + invert; the note gives
||invert(forward(x)) - x|| / ||x|| and the largest absolute error (benchmarks/inversion.py).
"""
import argparse
import dataclasses
import gc
import sys
import time
import traceback

import jax

from benchmarks import common, inversion

MODES = ('autodiff', 'remat', 'reversible')
SAFETY = 0.92   # share of the allocator's limit a step may plan to use (fragmentation)


def round_batch(batch: int) -> int:
  """Down to a multiple of 64 (>= 512), 8 (>= 64) or 1: shapes that suit GPU kernels."""
  for multiple in (64, 8):
    if batch >= 8 * multiple:
      return batch // multiple * multiple
  return max(1, batch)


def _line_from_one(c: common.Compiled):
  """(bytes that do not grow with the batch, bytes per image) from one compile.

  The fixed part is the planned peak less the temporaries that scale with the batch;
  of the temporaries, about the parameters' size is gradient buffers (fixed). The
  max() keeps at least half the temporaries per image where the gradients dominate.
  """
  fixed = c.peak_bytes - max(c.temp_bytes - c.param_bytes, c.temp_bytes // 2)
  return fixed, max(1.0, (c.peak_bytes - fixed) / c.batch_size)


def _fits(limit_bytes, fixed, slope):
  return int((limit_bytes - fixed) // slope)


def _compile_or_none(step: common.TrainStep, batch: int):
  """The compiled step, or None where compiling already runs out of device memory
  (GPU convolution autotuning allocates)."""
  try:
    return step.compile(batch)
  except Exception as e:  # noqa: BLE001  (XlaRuntimeError has no stable import path)
    if common.is_out_of_memory(e):
      return None
    raise


def fit_batch(step: common.TrainStep, limit_bytes: int, probe: common.Compiled, cap: int):
  """(compiled step at the largest batch <= cap that fits in limit_bytes, estimate).

  `probe` is any compile of this step (its executable may be dropped). The estimate
  is the uncapped batch that the line through the last two compiles predicts.
  """
  if probe.peak_bytes is None:
    raise MemoryError('XLA gives no memory analysis on this back end: give a batch size')
  while probe.peak_bytes > limit_bytes and probe.batch_size > 1:   # nothing runs: no OOM
    probe = step.compile(probe.batch_size // 2)
  if probe.peak_bytes > limit_bytes:
    raise MemoryError(f'batch 1 plans {probe.peak_bytes / common.GIB:.2f} GiB, more than the '
                      f'{limit_bytes / common.GIB:.2f} GiB planned with')
  fixed, slope = _line_from_one(probe)
  for _ in range(3):
    batch = round_batch(min(cap, _fits(limit_bytes, fixed, slope)))
    if batch == probe.batch_size and probe.fn is not None:
      return probe, _fits(limit_bytes, fixed, slope)
    compiled = _compile_or_none(step, batch)
    if compiled is None:   # ran out of memory while compiling: aim 15% lower
      slope *= 1.15
      continue
    if batch != probe.batch_size:   # the line through the probe and this compile
      slope = max(1.0, (compiled.peak_bytes - probe.peak_bytes) / (batch - probe.batch_size))
      fixed = compiled.peak_bytes - slope * batch
    if compiled.peak_bytes <= limit_bytes or batch == 1:
      return compiled, _fits(limit_bytes, fixed, slope)
    probe = compiled
  raise MemoryError(f'no batch found that fits in {limit_bytes / common.GIB:.2f} GiB')


# Numbers (no executable) of the last compile per row key: the probe of a later 'max' row.
_LAST_COMPILE = {}


def train_row(model: str, mode: str, batch, *, train_dtype='auto', smoke=False,
              limit_bytes=None, cap=4096, min_seconds=2.0, blocks=None, parallel='pmap',
              compiler_options=None):
  """One train row (a dict, see the module docstring), or None if `model` has no `mode`.

  batch: an integer, or 'max' for the largest that fits in `limit_bytes` (up to
  `cap`). An integer batch that XLA plans to need more than `limit_bytes` for is
  lowered to the largest that fits, and the row's note says so.
  """
  start = time.perf_counter()
  probe_batch = cap if batch == 'max' else int(batch)
  config = common.experiment_config(model, batch_size=probe_batch, smoke=smoke,
                                    backprop=mode, train_dtype=train_dtype, blocks=blocks,
                                    parallel=parallel)
  if mode not in common.backprop_modes(config.model):
    return None
  step = common.TrainStep(config, compiler_options=compiler_options)
  key = (model, mode, step.train_dtype, smoke, blocks, parallel)
  notes, estimate = [], None
  if batch == 'max':
    if limit_bytes is None:
      raise ValueError("batch 'max' needs the device's memory limit")
    probe = _LAST_COMPILE.get(key)
    if probe is None:
      probe = step.compile(min(cap, 256 if config.model.input_shape[0] <= 64 else 32))
    compiled, estimate = fit_batch(step, limit_bytes, probe, cap)
    if compiled.batch_size == cap and estimate > cap:
      notes.append(f'capped at {cap}')
  else:
    compiled = step.compile(int(batch))
    if limit_bytes is not None and compiled.peak_bytes is not None:
      if compiled.peak_bytes > limit_bytes:
        notes.append(f'{batch} plans {compiled.peak_bytes / common.GIB:.1f} GiB > '
                     f'{limit_bytes / common.GIB:.1f}')
        compiled, estimate = fit_batch(step, limit_bytes, compiled, int(batch))
      else:
        estimate = _fits(limit_bytes, *_line_from_one(compiled))
  for _ in range(4):   # the allocator may still run out near the limit: step down
    try:
      seconds, loss = step.time(compiled, min_seconds=min_seconds)
      break
    except Exception as e:   # noqa: BLE001  (XlaRuntimeError has no stable import path)
      if not common.is_out_of_memory(e) or compiled.batch_size <= 1:
        raise
      failed = compiled.batch_size
      notes.append(f'out of memory at {failed}')
      compiled = None   # frees the executable
      step.reset_state()
      compiled = step.compile(round_batch(int(0.85 * failed)))
  else:
    raise MemoryError(f'{model} {mode}: out of memory down to batch {compiled.batch_size}')
  if loss != loss or abs(loss) == float('inf'):
    notes.append(f'loss {loss}')
  _LAST_COMPILE[key] = dataclasses.replace(compiled, fn=None)
  precision = config.train_precision
  return {'what': 'train', 'model': model + (' (smoke)' if smoke else ''),
          'blocks': common.total_blocks(config.model),
          'config_blocks': common.config_blocks(model), 'mode': mode,
          'setting': f'{step.train_dtype}/{precision}', 'batch': compiled.batch_size,
          'max_batch': estimate, 'compile_s': compiled.compile_s, 'step_ms': 1e3 * seconds,
          'img_s': compiled.batch_size / seconds,
          'peak_gib': None if compiled.peak_bytes is None else compiled.peak_bytes / common.GIB,
          'note': '; '.join(notes), 'total_s': time.perf_counter() - start}


COLUMNS = [('what', 'what', ''), ('model', 'model', ''), ('blocks', 'blocks', 'd'),
           ('mode', 'mode', ''), ('setting', 'dtype/prec.', ''), ('batch', 'batch', 'd'),
           ('max_batch', 'max batch (est)', 'd'), ('compile_s', 'compile s', '.1f'),
           ('step_ms', 'ms/step', '.1f'), ('img_s', 'images/s', '.1f'),
           ('peak_gib', 'peak GiB', '.2f'), ('note', 'note', '')]


# --- The GPU suite (benchmarks/gpu.sh) -------------------------------------------------

# The authors' PyTorch code on an NVIDIA H200 (torch 2.11, eager, bf16 autocast,
# channels_last, random data, SGD); reference notes §6 and issue 10.
PYTORCH_ANCHORS = {   # model: (images/s, batch, what)
    'bijective_released': (1648, 512, 'eager bf16, 46.6 GiB'),
    'cifar10': (10190, 1024, 'eager bf16; torch.compile 12,614 after a 112 s compile'),
    'resnet50': (4677, 256, 'torchvision, eager bf16'),
}
TARGET_RATIO = 2.0        # issue 10: beat the authors' code by 2x
COMPILE_GOAL_S = 60.0     # issue 10: the 100-block models compile in under a minute


def gpu_plan(smoke: bool):
  """The suite, most important first: ('train', model, mode, batch) | ('invert', model).

  The reversible largest-batch row goes last: on an H200 (2026-12-04) it compiled for
  281 s (autotuning at batch 4,096) and left no time for the rest."""
  b256, b1024 = (8, 32) if smoke else (256, 1024)
  return [('train', 'bijective_released', 'autodiff', b256),
          ('train', 'bijective_released', 'autodiff', 'max'),
          ('train', 'bijective_released', 'reversible', b256),
          ('train', 'cifar10', 'autodiff', b1024),
          ('train', 'cifar10', 'reversible', b1024),
          ('train', 'resnet50', 'autodiff', b256),
          ('invert', 'bijective_released'),
          ('train', 'bijective', 'autodiff', b256),
          ('train', 'bijective', 'reversible', b256),
          ('train', 'revnet56', 'autodiff', b256),
          ('train', 'revnet56', 'reversible', b256),
          ('train', 'injective', 'autodiff', b256),
          ('train', 'injective', 'reversible', b256),
          ('invert', 'cifar10'),
          ('train', 'bijective_released', 'reversible', 'max')]


# The inversion rows: the trained precision's forward with the exact inverse, and the
# exact model both ways (the policy of irevnet_jax.train.config), and float32 at the backend's
# default precision (TF32-like on NVIDIA GPUs), on freshly initialised
# variables in eval mode, x uniform in [0, 1).
INVERSION_SETTINGS = ('bfloat16>float32/highest', 'float32/highest', 'float32/default')


def _guess_seconds(item, costs, smoke):
  """What a plan item is expected to cost: the last cost of the same model (1.5x for a
  'max' row, which compiles once more), else a default by kind and size."""
  model = item[1]
  if model in costs:
    return costs[model] * (1.5 if item[-1] == 'max' else 1.0)
  if smoke:
    return 10.0
  return 60.0 if model.startswith(('bijective', 'injective')) else 30.0


def run_suite(budget_s: float, smoke: bool, memory_gib=None, min_seconds=2.0, cap=4096,
              train_dtype='bfloat16', inversion_batch=8):
  """Runs `gpu_plan` until `budget_s` is spent, printing each row as it comes; then the
  table, the comparison with the PyTorch anchors and the compile goal. Returns the rows."""
  deadline = time.perf_counter() + budget_s
  limit = common.device_memory_bytes(memory_gib)
  if limit is None:
    raise ValueError('this device reports no memory limit; pass --memory_gib (e.g. 2 on CPU)')
  limit = int(limit * SAFETY)
  print(f'suite on {common.device_name()}, jax {jax.__version__}, the runner\'s train step '
        f'(pmap, one device), planning with {limit / common.GIB:.2f} GiB, budget '
        f'{budget_s:.0f} s'
        + (' (SMOKE: shrunken models, numbers mean nothing)' if smoke else ''), flush=True)
  rows, costs = [], {}
  for item in gpu_plan(smoke):
    kind, model = item[0], item[1]
    left = deadline - time.perf_counter()
    guess = _guess_seconds(item, costs, smoke)
    label = ' '.join(str(a) for a in item[1:])
    asked = f'batch {item[3]}: ' if kind == 'train' else ''
    if left < guess:
      rows.append({'what': kind, 'model': model, 'mode': item[2] if kind == 'train' else None,
                   'note': f'{asked}skipped, {left:.0f} s left, ~{guess:.0f} s needed'})
      print(f'[skip] {kind} {label}: {rows[-1]["note"]}', flush=True)
      continue
    started = time.perf_counter()
    try:
      if kind == 'train':
        row = train_row(model, item[2], item[3], train_dtype=train_dtype, smoke=smoke,
                        limit_bytes=limit, cap=cap, min_seconds=min_seconds)
        new_rows = [row] if row else []
      else:
        new_rows = inversion_rows(model, inversion_batch, smoke)
    except Exception as e:  # noqa: BLE001  one failure must not lose the other rows
      traceback.print_exc(file=sys.stdout)   # the whole story in the log; the row gets a line
      message = (str(e).strip().splitlines() or [''])[0][:100]
      new_rows = [{'what': kind, 'model': model, 'mode': item[2] if kind == 'train' else None,
                   'note': f'{asked}error: {type(e).__name__}: {message}'}]
    gc.collect()   # free the last row's device buffers before the next row plans its memory
    costs[model] = time.perf_counter() - started
    rows += new_rows
    print(f'[{time.perf_counter() - deadline + budget_s:4.0f} s] {kind} {label} '
          f'({costs[model]:.0f} s)', flush=True)
    for row in new_rows:   # each row as soon as it is known, in case the run is cut short
      print('    ' + ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                               for k, v in row.items()
                               if k not in ('what', 'total_s', 'config_blocks')
                               and v not in (None, '')),
            flush=True)
  print()
  print(common.format_table(rows, COLUMNS, markdown=True))
  print()
  for line in summary_lines(rows, smoke, jax.devices()[0].device_kind):
    print(line)
  return rows


def inversion_rows(model: str, batch: int, smoke: bool):
  """The suite's inversion rows of `model` (see INVERSION_SETTINGS)."""
  rows = []
  for r in inversion.measure(model, batch, INVERSION_SETTINGS, smoke=smoke,
                             report=lambda _: None):
    rows.append({'what': 'invert', 'model': r['model'] + (' (smoke)' if smoke else ''),
                 'setting': r['setting'], 'batch': r['batch'], 'compile_s': r['seconds'],
                 'note': f'rel. error {r["rel_error"]:.2e} (max abs {r["max_abs_error"]:.1e})'})
  return rows


def summary_lines(rows, smoke: bool, card: str = ''):
  """The comparison with the PyTorch anchors and the 100-block compile goal."""
  lines = []
  prefix = 'SMOKE, not comparable: ' if smoke else ''
  if card:
    lines.append(f'{prefix}card: {card}; the PyTorch anchors below were measured on an H200')
  for row in rows:
    model = row['model'].replace(' (smoke)', '')
    if row['what'] != 'train' or model not in PYTORCH_ANCHORS or not row.get('img_s'):
      continue
    anchor, anchor_batch, how = PYTORCH_ANCHORS[model]
    ratio = row['img_s'] / anchor
    lines.append(
        f'{prefix}{model} {row["setting"]} {row["mode"]} batch {row["batch"]}: '
        f'{row["img_s"]:,.0f} images/s = {ratio:.2f}x PyTorch\'s {anchor:,} (batch '
        f'{anchor_batch}, H200, {how}); goal on an H200: {TARGET_RATIO:.0f}x = '
        f'{TARGET_RATIO * anchor:,.0f}')
  largest = {}   # (model, mode) -> the largest max-batch estimate of its train rows
  for r in rows:
    if r['what'] == 'train' and r.get('max_batch'):
      key = (r['model'], r['mode'])
      largest[key] = max(largest.get(key, 0), r['max_batch'])
  for (model, mode), batch in largest.items():
    base = largest.get((model, 'autodiff'))
    if mode != 'autodiff' and base:
      lines.append(f'{prefix}{model}: {mode} fits ~{batch:,} images per step, autodiff '
                   f'~{base:,}: {batch / base:.1f}x (XLA memory-analysis estimates)')
  big = [r for r in rows if r['what'] == 'train' and r.get('compile_s') is not None
         and (r.get('config_blocks') or 0) >= 100]
  if big:
    worst = max(big, key=lambda r: r['compile_s'])
    verdict = 'met' if worst['compile_s'] < COMPILE_GOAL_S else 'NOT met'
    lines.append(f'{prefix}100-block models: slowest train-step compile {worst["compile_s"]:.1f} s '
                 f'({worst["model"]} {worst["mode"]} batch {worst["batch"]}, {worst["blocks"]} '
                 f'blocks) of {len(big)} rows; goal < {COMPILE_GOAL_S:.0f} s: {verdict}')
  else:
    lines.append(f'{prefix}100-block models: no train row compiled (compile goal not checked)')
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--suite', default='', choices=['', 'gpu'],
                      help="'gpu': the whole GPU table of benchmarks/gpu.sh")
  parser.add_argument('--models', default='cifar10', help='names in experiments/configs/')
  parser.add_argument('--dtypes', default='auto',
                      help="train_dtype values: auto (bfloat16 on GPU/TPU), float32, bfloat16")
  parser.add_argument('--modes', default=','.join(MODES))
  parser.add_argument('--batch', default='32', help="an integer, or 'max' (largest that fits)")
  parser.add_argument('--max_batch', type=int, default=4096, help="cap for --batch=max")
  parser.add_argument('--blocks', default='3,3,3',
                      help="blocks (units) per stage, comma-separated, or 'preset' for the "
                           "config's")
  parser.add_argument('--memory_gib', type=float, default=None,
                      help='device memory to plan with where the device reports none (CPU)')
  parser.add_argument('--min_seconds', type=float, default=2.0, help='timing per row')
  parser.add_argument('--repeats', type=int, default=1,
                      help='time each row this often (interleaved) and keep the fastest')
  parser.add_argument('--budget_s', type=float, default=420.0, help='time budget of --suite')
  parser.add_argument('--parallel', default='pmap', choices=['pmap', 'shard_map'],
                      help='the parallel back end of the runner (one device either way)')
  parser.add_argument('--smoke', action='store_true', help='shrunken models (CPU check)')
  args = parser.parse_args()

  if args.suite == 'gpu':
    run_suite(args.budget_s, args.smoke, args.memory_gib, args.min_seconds, args.max_batch,
              train_dtype='bfloat16')
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
          row = train_row(model, mode, args.batch, train_dtype=dtype, smoke=args.smoke,
                          limit_bytes=limit and int(limit * SAFETY), cap=args.max_batch,
                          min_seconds=args.min_seconds, blocks=blocks,
                          parallel=args.parallel)
          gc.collect()
          if row is None:
            continue
          key = (model, row['setting'], mode)
          if key not in best or row['step_ms'] < best[key]['step_ms']:
            best[key] = row
          print(f'  {model} {row["setting"]} {mode}: {row["step_ms"]:.1f} ms/step at batch '
                f'{row["batch"]}', flush=True)
  rows = list(best.values())
  print(common.format_table(rows, COLUMNS))
  _print_ratios(rows)


def _print_ratios(rows):
  by_key = {(r['model'], r['setting'], r['mode']): r for r in rows}
  for (model, setting, mode), row in by_key.items():
    base = by_key.get((model, setting, 'autodiff'))
    if base and mode != 'autodiff' and base['batch'] == row['batch']:
      print(f'{model} {setting}: {mode} step time = '
            f'{row["step_ms"] / base["step_ms"]:.2f}x autodiff')
    if base and mode != 'autodiff' and row.get('max_batch') and base.get('max_batch'):
      print(f'{model} {setting}: {mode} fits {row["max_batch"] / base["max_batch"]:.1f}x '
            f'the batch of autodiff')


if __name__ == '__main__':
  main()
