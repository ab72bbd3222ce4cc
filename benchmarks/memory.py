"""Memory of one training step vs depth, per backprop mode (XLA's compiled memory analysis).

    python -m benchmarks.memory                          # cifar10, 3/6/12/24 blocks per stage
    python -m benchmarks.memory --model=bijective --batch=32 --base_blocks=1,2,9,1

Compiles (never runs) the runner's train step (`benchmarks.common.TrainStep`) at 1x,
2x, 4x and 8x the blocks of every stage and prints XLA's temp bytes: what the step
allocates beyond its arguments (state, batch) and outputs. 'autodiff' stores every
block's activations, so it grows with depth; 'reversible' stores each stage's outputs
only and should stay flat ('temp-grads' leaves out the gradient buffers, as large as the
parameters, which grow with depth in every mode). On CPU the block scans unroll
(model.block_scan='auto'); --rolled measures the rolled program that GPUs run.
"""
import argparse

import jax

from benchmarks import common

MODES = ('autodiff', 'remat', 'reversible')


def measure(model: str, batch: int, base_blocks, multipliers, dtype='float32', modes=MODES,
            smoke=False, report=print, block_scan='auto', compiler_options=None):
  """Rows {mode, depth, blocks, temp_gib, ratio (to 1x), act_gib, ...}, printed as they come."""
  rows = []
  for mode in modes:
    first = first_act = None
    for m in multipliers:
      blocks = tuple(b * m for b in base_blocks)
      config = common.experiment_config(model, batch_size=batch, smoke=smoke, backprop=mode,
                                        train_dtype=dtype, blocks=blocks)
      config.model.block_scan = block_scan
      c = common.TrainStep(config, compiler_options=compiler_options).compile(batch)
      first, first_act = first or c.temp_bytes, first_act or c.temp_bytes - c.param_bytes
      rows.append({'model': model, 'dtype': dtype, 'mode': mode, 'depth': f'{m}x',
                   'blocks': '/'.join(map(str, blocks)), 'batch': batch,
                   'temp_gib': c.temp_bytes / common.GIB, 'ratio': c.temp_bytes / first,
                   'act_gib': (c.temp_bytes - c.param_bytes) / common.GIB,
                   'act_ratio': (c.temp_bytes - c.param_bytes) / first_act,
                   'peak_gib': c.peak_bytes / common.GIB, 'compile_s': c.compile_s})
      report(f'  {mode:10s} {rows[-1]["blocks"]:>12s} temp {rows[-1]["temp_gib"]:.3f} GiB '
             f'({rows[-1]["ratio"]:.2f}x of 1x), compiled in {c.compile_s:.1f} s')
  return rows


COLUMNS = [('model', 'model', ''), ('dtype', 'dtype', ''), ('mode', 'mode', ''),
           ('depth', 'depth', ''), ('blocks', 'blocks/stage', ''), ('batch', 'batch', 'd'),
           ('temp_gib', 'temp GiB', '.3f'), ('ratio', 'x of 1x', '.2f'),
           ('act_gib', 'temp-grads GiB', '.3f'), ('act_ratio', 'x of 1x', '.2f'),
           ('peak_gib', 'peak GiB', '.3f'), ('compile_s', 'compile s', '.1f')]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='cifar10', help='a name in experiments/configs/')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--base_blocks', default='3,3,3', help='blocks per stage at 1x')
  parser.add_argument('--multipliers', default='1,2,4,8')
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--modes', default=','.join(MODES))
  parser.add_argument('--smoke', action='store_true', help='a shrunken model (CPU check)')
  parser.add_argument('--rolled', action='store_true', help='rolled block scans on CPU too')
  args = parser.parse_args()
  print(f'memory of one training step on {common.device_name()}, jax {jax.__version__}')
  rows = measure(args.model, args.batch, tuple(int(b) for b in args.base_blocks.split(',')),
                 tuple(int(m) for m in args.multipliers.split(',')), args.dtype,
                 args.modes.split(','), args.smoke,
                 block_scan='rolled' if args.rolled else 'auto')
  print(common.format_table(rows, COLUMNS))


if __name__ == '__main__':
  main()
