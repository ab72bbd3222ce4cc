"""Memory of one training step vs depth, per backprop mode (XLA's compiled memory analysis).

    python -m benchmarks.memory                          # cifar10 layout, 3/6/12/24 blocks per stage
    python -m benchmarks.memory --model=bijective --batch=32 --base_blocks=1,2,9,1

Compiles (never runs) the jitted training step of `benchmarks.common` at 1x, 2x,
4x and 8x the blocks of every stage and prints XLA's temp bytes: what the step
allocates beyond its arguments (params, optimizer state, batch) and outputs.
'autodiff' stores every block's activations, so it grows with depth;
'reversible' stores only each stage's outputs and should stay flat (the
gradient buffers, as large as the parameters, still grow with depth: the
'temp-grads' columns leave them out).
On CPU the block scans are unrolled by default (model.block_scan='auto', see
`reversible.scan_unroll`); --rolled measures the rolled program that GPUs run.
"""
import argparse

import jax

from benchmarks import common
from irevnet_jax.model import reversible

MODES = ('autodiff', 'remat', 'reversible')


def measure(model: str, batch: int, base_blocks, multipliers, dtype='float32', modes=MODES,
            smoke=False, report=print, block_scan='auto'):
  """Rows {mode, depth, blocks, temp_gib, ratio (to 1x), compile_s}, printed as they come."""
  rows = []
  for mode in modes:
    first = first_act = None
    for m in multipliers:
      blocks = tuple(b * m for b in base_blocks)
      config = common.with_dtype(
          common.model_config(model, smoke=smoke, blocks=blocks, backprop=mode,
                              block_scan=block_scan), dtype)
      compiled = common.compile_step(common.build(config), batch)
      first = first or compiled.temp_bytes
      first_act = first_act or compiled.temp_bytes - compiled.param_bytes
      row = {'model': model, 'dtype': dtype, 'mode': mode, 'depth': f'{m}x',
             'blocks': '/'.join(map(str, blocks)), 'batch': batch,
             'temp_gib': compiled.temp_bytes / common.GIB,
             'act_gib': (compiled.temp_bytes - compiled.param_bytes) / common.GIB,
             'peak_gib': compiled.peak_bytes / common.GIB,
             'ratio': compiled.temp_bytes / first, 'compile_s': compiled.compile_s}
      row['act_ratio'] = row['act_gib'] * common.GIB / first_act
      rows.append(row)
      report(f'  {mode:10s} {row["blocks"]:>12s} temp {row["temp_gib"]:.3f} GiB '
             f'({row["ratio"]:.2f}x of 1x), compiled in {row["compile_s"]:.1f} s')
  return rows


COLUMNS = [('model', 'model', ''), ('dtype', 'dtype', ''), ('mode', 'mode', ''),
           ('depth', 'depth', ''), ('blocks', 'blocks/stage', ''), ('batch', 'batch', 'd'),
           ('temp_gib', 'temp GiB', '.3f'), ('ratio', 'x of 1x', '.2f'),
           ('act_gib', 'temp-grads GiB', '.3f'), ('act_ratio', 'x of 1x', '.2f'),
           ('peak_gib', 'peak GiB', '.3f'), ('compile_s', 'compile s', '.1f')]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='cifar10')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--base_blocks', default='3,3,3', help='blocks per stage at 1x')
  parser.add_argument('--multipliers', default='1,2,4,8')
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--modes', default=','.join(MODES))
  parser.add_argument('--smoke', action='store_true', help='a shrunken model (CPU check)')
  parser.add_argument('--rolled', action='store_true',
                      help='keep the block scans rolled on CPU too (the program GPUs run)')
  args = parser.parse_args()
  block_scan = 'rolled' if args.rolled else 'auto'
  base = tuple(int(b) for b in args.base_blocks.split(','))
  multipliers = tuple(int(m) for m in args.multipliers.split(','))
  print(f'memory of one training step on {common.device_name()}, jax {jax.__version__}, '
        f'block scans unrolled: {reversible.scan_unroll(block_scan) is True}')
  rows = measure(args.model, args.batch, base, multipliers, args.dtype,
                 args.modes.split(','), args.smoke, block_scan=block_scan)
  print(common.format_table(rows, COLUMNS))


if __name__ == '__main__':
  main()
