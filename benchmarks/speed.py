"""Training speed and memory of the runner's step: compile time, images/s, largest batch.

    python -m benchmarks.speed                      # CPU: cifar10, 3 blocks/stage, batch 32
    python -m benchmarks.speed --models=bijective_released --dtypes=bfloat16 --blocks=preset \\
        --batch=max --memory_gib=120
    python -m benchmarks.speed --compile_only --depths=1,2,4,8 --batch=64   # memory vs depth
    python -m benchmarks.speed --models=digits --blocks=preset --batch=64 --real_data --feed
    python -m benchmarks.speed --trees=/work/wt/base,. --blocks=preset --batch=64 \\
        --modes=autodiff,reversible --min_seconds=0 --repeats=2   # before/after

Timed: `common.TrainStep`, the step `experiments.main` compiles for experiments/configs/
<model>.py, on uint8 synthetic images (--real_data: the config's data set) kept on the
device (--feed: a new batch per step, prefetched as the loop does), steps back to back.
Columns: blocks (units) over all stages; dtype/prec. of training (parameters, optimizer
state, coupling streams: float32); compile s = trace + lower + compile; peak GiB = XLA's
planned memory (arguments + temporaries + outputs not aliased to the donated state); max
batch (est): what fits the device's limit x SAFETY by XLA's memory analysis (the bytes
that grow with the batch and those that do not, from compiles: nothing runs out of memory).

--compile_only --depths: XLA's temp bytes (beyond arguments and outputs) at multiples of
--blocks and their ratio to the first: autodiff stores every block's activations, reversible
each stage's outputs (flat but for the gradient buffers, which temp-grads leaves out). CPUs
unroll the block scans (block_scan 'auto'); --block_scan=rolled is what GPUs run.

--trees: each (repeat, tree, model, dtype, mode) is that checkout's `speed.py --json` in a
fresh process (a loaded machine slows every side alike), with its peak RSS. --min_seconds=0
times exactly 3 steps (after 3): the losses compare. --cache_dir: a persistent cache.
"""
import argparse
import ast
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys

import jax

from benchmarks import common, tables
from irevnet_jax.train import memory_fit

MODES = ('autodiff', 'remat', 'reversible')
SAFETY = 0.92   # share of the allocator's limit a step may plan to use (fragmentation)



def _line_from_one(c: common.Compiled):
  """(bytes that do not grow with the batch, bytes per image) from one compile."""
  return memory_fit.line_through(c.peak_bytes, c.temp_bytes, c.param_bytes, c.batch_size)


def _fits(limit_bytes, fixed, slope):
  return int((limit_bytes - fixed) // slope)


def fit_batch(step: common.TrainStep, limit_bytes: int, probe: common.Compiled, cap: int):
  """(compiled step at the largest batch <= cap that fits in limit_bytes, uncapped estimate
  from the line through the last two compiles); `probe` is any compile of this step."""
  if probe.peak_bytes is None:
    raise MemoryError('XLA gives no memory analysis on this back end: give a batch size')
  while probe.peak_bytes > limit_bytes and probe.batch_size > 1:   # nothing runs: no OOM
    probe = step.compile(probe.batch_size // 2)
  if probe.peak_bytes > limit_bytes:
    raise MemoryError(f'batch 1 plans {probe.peak_bytes / common.GIB:.2f} GiB, more than the '
                      f'{limit_bytes / common.GIB:.2f} GiB planned with')
  fixed, slope = _line_from_one(probe)
  for _ in range(3):
    batch = memory_fit.round_batch(min(cap, _fits(limit_bytes, fixed, slope)))
    if batch == probe.batch_size and probe.fn is not None:
      return probe, _fits(limit_bytes, fixed, slope)
    try:
      compiled = step.compile(batch)
    except Exception as e:  # noqa: BLE001  GPU autotuning can run out of memory compiling
      if not common.is_out_of_memory(e):
        raise
      slope *= 1.15
      continue
    if batch != probe.batch_size:
      slope = max(1.0, (compiled.peak_bytes - probe.peak_bytes) / (batch - probe.batch_size))
      fixed = compiled.peak_bytes - slope * batch
    if compiled.peak_bytes <= limit_bytes or batch == 1:
      return compiled, _fits(limit_bytes, fixed, slope)
    probe = compiled
  raise MemoryError(f'no batch found that fits in {limit_bytes / common.GIB:.2f} GiB')


_LAST_COMPILE = {}   # row key -> numbers of its last compile: the probe of a later 'max' row


def train_row(model: str, mode: str, batch, *, train_dtype='auto', smoke=False,
              limit_bytes=None, cap=4096, min_seconds=2.0, blocks=None, parallel='pmap',
              compiler_options=None, real_data=False, feed=False, input_size=0,
              block_scan='', compile_only=False, model_fields=None):
  """One row (a dict, see COLUMNS), or None if `model` has no `mode`.

  model_fields: {field: value} set in the config's `model` (e.g. {'block_scan': 'unroll:4'}).

  batch: an integer, or 'max' for the largest that fits in `limit_bytes` (up to `cap`);
  an integer that XLA plans to need more than `limit_bytes` for is lowered to fit.
  """
  config = common.experiment_config(model, batch_size=cap if batch == 'max' else int(batch),
                                    smoke=smoke, backprop=mode, train_dtype=train_dtype,
                                    blocks=blocks, parallel=parallel, real_data=real_data)
  if mode not in common.backprop_modes(config.model):
    return None
  if input_size:
    config.model.input_shape = (input_size, input_size, config.model.input_shape[-1])
  if block_scan:
    config.model.block_scan = block_scan
  config.model.update(model_fields or {})
  step = common.TrainStep(config, compiler_options=compiler_options)
  key = (model, mode, step.train_dtype, smoke, blocks, parallel, input_size, block_scan,
         tuple(sorted((model_fields or {}).items())))
  notes, estimate = [], None
  if batch == 'max':
    if limit_bytes is None:
      raise ValueError("batch 'max' needs the device's memory limit")
    probe = _LAST_COMPILE.get(key) or step.compile(
        min(cap, 256 if config.model.input_shape[0] <= 64 else 32))
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
  seconds, loss = (None, None) if compile_only else step.time(compiled, min_seconds, feed=feed)
  if loss is not None and not math.isfinite(loss):
    notes.append(f'loss {loss}')
  _LAST_COMPILE[key] = dataclasses.replace(compiled, fn=None)
  gib = lambda b: None if b is None else b / common.GIB
  return {'what': 'train', 'model': model + (' (smoke)' if smoke else ''),
          'blocks': common.total_blocks(config.model),
          'config_blocks': common.config_blocks(model), 'mode': mode,
          'setting': f'{step.train_dtype}/{config.train_precision}',
          'batch': compiled.batch_size, 'max_batch': estimate, 'compile_s': compiled.compile_s,
          'step_ms': seconds and 1e3 * seconds, 'img_s': seconds and compiled.batch_size / seconds,
          'peak_gib': gib(compiled.peak_bytes), 'temp_gib': gib(compiled.temp_bytes),
          'act_gib': gib(compiled.temp_bytes and compiled.temp_bytes - compiled.param_bytes),
          'rss_gib': gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
          'loss': loss, 'note': '; '.join(notes)}


COLUMNS = [('what', 'what', ''), ('model', 'model', ''), ('blocks', 'blocks', 'd'),
           ('mode', 'mode', ''), ('setting', 'dtype/prec.', ''), ('batch', 'batch', 'd'),
           ('max_batch', 'max batch (est)', 'd'), ('compile_s', 'compile s', '.1f'),
           ('step_ms', 'ms/step', '.1f'), ('img_s', 'images/s', '.1f'),
           ('peak_gib', 'peak GiB', '.2f'), ('note', 'note', '')]

MEMORY_COLUMNS = [*COLUMNS[1:6], ('temp_gib', 'temp GiB', '.3f'), ('temp_x', 'x of first', '.2f'),
                  ('act_gib', 'temp-grads GiB', '.3f'), ('act_x', 'x of first', '.2f'),
                  ('peak_gib', 'peak GiB', '.3f'), ('compile_s', 'compile s', '.1f')]
TREE_COLUMNS = [('repeat', 'repeat', 'd'), ('tree', 'tree', ''), *COLUMNS[1:6],
                ('compile_s', 'compile s', '.1f'), ('step_ms', 'ms/step', '.1f'),
                ('img_s', 'images/s', '.1f'), ('temp_gib', 'XLA temp GiB', '.3f'),
                ('rss_gib', 'peak RSS GiB', '.2f'), ('loss', 'loss', '.5f'), ('note', 'note', '')]


def tree_rows(tree, model, dtype, mode, args):
  """The rows of one side of --trees, measured by `tree`'s own speed.py in a fresh process."""
  argv = [f'--models={model}', f'--dtypes={dtype}', f'--modes={mode}', f'--batch={args.batch}',
          f'--blocks={args.blocks}', f'--min_seconds={args.min_seconds}', f'--input={args.input}',
          f'--block_scan={args.block_scan}', f'--cache_dir={args.cache_dir}', '--json']
  env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), TF_CPP_MIN_LOG_LEVEL='2')
  out = subprocess.run([sys.executable, '-m', 'benchmarks.speed', *argv,
                        *['--smoke'] * args.smoke], cwd=tree, env=env, capture_output=True,
                       text=True, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith('ROWS ')]
  if lines:
    return json.loads(lines[-1][len('ROWS '):])
  error = (out.stderr.strip().splitlines() or ['?'])[-1]
  return [{'model': model, 'mode': mode, 'note': f'error: {error}'}]


def parse_fields(assignments):
  """['a=1', 'b=rolled'] -> {'a': 1, 'b': 'rolled'}: each value a Python literal, else a
  string."""
  fields = {}
  for assignment in assignments:
    name, sep, text = assignment.partition('=')
    if not sep:
      raise SystemExit(f'--model_field={assignment!r}: expected FIELD=VALUE')
    try:
      fields[name] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      fields[name] = text
  return fields


def add_depth_ratios(rows):
  """Adds each row's temp (and temp-grads) bytes as a multiple of the first row of the same
  model, setting and mode: memory against depth. Returns the rows."""
  for row in rows:
    first = next(r for r in rows if r['model'] == row['model'] and r['mode'] == row['mode']
                 and r.get('setting') == row.get('setting'))
    if row.get('temp_gib') and first.get('temp_gib'):
      row.update(temp_x=row['temp_gib'] / first['temp_gib'],
                 act_x=row['act_gib'] / first['act_gib'])
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='cifar10', help='names in experiments/configs/')
  parser.add_argument('--dtypes', default='auto', help='auto (bfloat16 on GPU/TPU), float32, ...')
  parser.add_argument('--modes', default=','.join(MODES))
  parser.add_argument('--batch', default='32', help="an integer, or 'max' (largest that fits)")
  parser.add_argument('--max_batch', type=int, default=4096, help="cap for --batch=max")
  parser.add_argument('--blocks', default='3,3,3', help="per stage (units), or 'preset'")
  parser.add_argument('--depths', default='1', help='multiples of --blocks, one row each')
  parser.add_argument('--compile_only', action='store_true', help='no run: compile and memory')
  parser.add_argument('--memory_gib', type=float, help='memory to plan with where none is known')
  parser.add_argument('--min_seconds', type=float, default=2.0, help='timing per row')
  parser.add_argument('--repeats', type=int, default=1, help='rows interleaved; the fastest kept')
  parser.add_argument('--parallel', default='pmap', choices=['pmap', 'shard_map'])
  parser.add_argument('--smoke', action='store_true', help='shrunken models (CPU check)')
  parser.add_argument('--real_data', action='store_true', help="the config's own data set")
  parser.add_argument('--feed', action='store_true', help='a new prefetched batch per step')
  parser.add_argument('--input', type=int, default=0, help='input x input images (0: config)')
  parser.add_argument('--block_scan', default='',
                      help="model.block_scan: auto|unrolled|rolled|unroll:<k>")
  parser.add_argument('--model_field', action='append', default=[],
                      help='FIELD=VALUE set in the config\'s model (a Python literal, else a '
                           'string); repeatable')
  parser.add_argument('--cache_dir', default='', help='persistent compilation cache directory')
  parser.add_argument('--trees', default='', help='checkouts to compare, one process a side')
  parser.add_argument('--json', action='store_true', help='print the rows as one JSON line')
  args = parser.parse_args(argv)
  sides = [(model, dtype, mode) for model in args.models.split(',')
           for dtype in args.dtypes.split(',') for mode in args.modes.split(',')]
  if args.trees:
    rows = [dict(row, repeat=r, tree=tree) for r in range(args.repeats)
            for tree in args.trees.split(',') for model, dtype, mode in sides
            for row in tree_rows(tree, model, dtype, mode, args)]
    print(tables.format_table(rows, TREE_COLUMNS, markdown=True))
    return
  if args.cache_dir:
    jax.config.update('jax_compilation_cache_dir', args.cache_dir)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  limit = common.device_memory_bytes(args.memory_gib)
  if args.batch == 'max' and limit is None:
    parser.error('--batch=max needs --memory_gib on a device that reports no memory limit')
  depths = [int(d) for d in args.depths.split(',')]
  if args.blocks == 'preset' and depths != [1]:
    parser.error('--depths multiplies --blocks: give them per stage')
  blocks = lambda depth: None if args.blocks == 'preset' else tuple(
      int(b) * depth for b in args.blocks.split(','))
  print(f'training speed on {common.device_name()}, jax {jax.__version__}', flush=True)
  rows = tables.run_items(
      [('train', model, mode, dtype, depth) for _ in range(args.repeats)
       for model, dtype, mode in sides for depth in depths],
      lambda item: [r for r in [train_row(
          item[1], item[2], args.batch, train_dtype=item[3], smoke=args.smoke,
          limit_bytes=limit and int(limit * SAFETY), cap=args.max_batch,
          min_seconds=args.min_seconds, blocks=blocks(item[4]), parallel=args.parallel,
          real_data=args.real_data, feed=args.feed, input_size=args.input,
          block_scan=args.block_scan, compile_only=args.compile_only,
          model_fields=parse_fields(args.model_field))] if r])
  best = {}   # the fastest of the repeats
  for row in rows:
    key = (row['model'], row.get('setting'), row['mode'], row.get('blocks'))
    if key not in best or (row.get('step_ms') or 0) < (best[key].get('step_ms') or 0):
      best[key] = row
  rows = add_depth_ratios(list(best.values()))
  if args.json:
    print('ROWS ' + json.dumps(rows))
    return
  print(tables.format_table(rows, MEMORY_COLUMNS if args.compile_only else COLUMNS[1:]))


if __name__ == '__main__':
  main()
