"""The train step's options on one card (issue 29 item 2), each against the baseline row of
the same run: BN and ReLU unfused (the baseline fuses them), F's BN-ReLU-convolution pairs as
one Pallas kernel (model.fused_kernel='pallas', Triton; not yet timed on a GPU), bfloat16
coupling streams, XLA's command buffers (CUDA graphs) off / extended to loops, block scans
partly unrolled / unrolled.

    python -m benchmarks.gpu_options                  # on the GPU: bijective_released, batch 256
    python -m benchmarks.gpu_options --smoke          # the logic on CPU (shrunken model)
    python -m benchmarks.gpu_options --variants=baseline,unroll:4 --batch=512
    python -m benchmarks.gpu_options --variants='baseline,pallas kernel' --timeout_s=300

Every row is `benchmarks.speed --json` in a fresh process (XLA reads its flags once, at
start): the runner's train step of experiments/configs/<model>.py, bfloat16 compute, autodiff
unless --mode, synthetic uint8 images on the device. The baseline runs first and is the
denominator of 'x baseline'; a row whose process fails or passes its --timeout_s says why in
its note (an XLA flag this build lacks, a compile that did not finish: results too).
"""
import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import tables

# XLA's command-buffer kinds: its default set, and the same with loops and conditionals
# captured too (a rolled block scan is a while loop).
_LOOPS_IN_GRAPHS = 'FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL'
# name -> (environment, speed.py arguments)
VARIANTS = {
    'baseline': ({}, ['--block_scan=rolled']),
    'plain BN-ReLU': ({}, ['--block_scan=rolled', '--model_field=fused_bn_relu=False']),
    'pallas kernel': ({}, ['--block_scan=rolled', '--model_field=fused_kernel=pallas']),
    'bf16 streams': ({}, ['--block_scan=rolled', '--model_field=stream_dtype=bfloat16']),
    'graphs off': ({'XLA_FLAGS': '--xla_gpu_enable_command_buffer='}, ['--block_scan=rolled']),
    'graphs + loops': ({'XLA_FLAGS': f'--xla_gpu_enable_command_buffer={_LOOPS_IN_GRAPHS}'},
                       ['--block_scan=rolled']),
    'unroll:2': ({}, ['--block_scan=unroll:2']),
    'unroll:4': ({}, ['--block_scan=unroll:4']),
    'unrolled': ({}, ['--block_scan=unrolled']),
}
COLUMNS = [('variant', 'variant', ''), ('model', 'model', ''), ('mode', 'mode', ''),
           ('setting', 'dtype/prec.', ''), ('batch', 'batch', 'd'),
           ('compile_s', 'compile s', '.1f'), ('step_ms', 'ms/step', '.1f'),
           ('img_s', 'images/s', '.1f'), ('x_baseline', 'x baseline', '.2f'),
           ('peak_gib', 'peak GiB', '.2f'), ('note', 'note', '')]


def variant_row(name, args):
  """The row of variant `name`, measured by speed.py in a fresh process."""
  environment, extra = VARIANTS[name]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  for key, value in environment.items():
    env[key] = f'{env.get(key, "")} {value}'.strip()
  command = [sys.executable, '-m', 'benchmarks.speed', f'--models={args.model}',
             f'--dtypes={args.dtype}', f'--modes={args.mode}', f'--batch={args.batch}',
             '--blocks=preset', f'--min_seconds={args.min_seconds}', '--json', *extra,
             *['--smoke'] * args.smoke]
  start = time.time()
  try:
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                         timeout=args.timeout_s)
  except subprocess.TimeoutExpired:
    return {'variant': name, 'note': f'not done in {args.timeout_s:.0f} s'}
  lines = [line for line in out.stdout.splitlines() if line.startswith('ROWS ')]
  if out.returncode or not lines:
    error = (out.stderr.strip().splitlines() or ['no output'])[-1]
    return {'variant': name, 'note': f'exit {out.returncode} after '
                                     f'{time.time() - start:.0f} s: {error[:120]}'}
  row = json.loads(lines[-1][len('ROWS '):])[0]
  return dict(row, variant=name)


def with_ratios(rows):
  """Adds each row's images/s over the baseline row's (the first row)."""
  base = rows[0].get('img_s') if rows else None
  for row in rows:
    if base and row.get('img_s'):
      row['x_baseline'] = row['img_s'] / base
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='bijective_released', help='experiments/configs/<model>')
  parser.add_argument('--batch', default='256')
  parser.add_argument('--mode', default='autodiff', help='model.backprop')
  parser.add_argument('--dtype', default='bfloat16')
  parser.add_argument('--variants', default=','.join(VARIANTS), help='names, baseline first')
  parser.add_argument('--min_seconds', type=float, default=3.0, help='timing per row')
  parser.add_argument('--timeout_s', type=float, default=150.0, help='per row (its process)')
  parser.add_argument('--smoke', action='store_true', help='shrunken model (CPU check)')
  args = parser.parse_args(argv)
  names = args.variants.split(',')
  unknown = [n for n in names if n not in VARIANTS]
  if unknown or names[0] != 'baseline':
    parser.error(f'--variants: {unknown or names} must start with baseline and name only '
                 f'{list(VARIANTS)}')
  rows = []
  for name in names:
    rows.append(variant_row(name, args))
    print(f'{name}: {rows[-1].get("img_s") or rows[-1].get("note")}', flush=True)
  print('\n' + tables.format_table(with_ratios(rows), COLUMNS, markdown=True))


if __name__ == '__main__':
  main()
