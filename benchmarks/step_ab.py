"""Before/after of the runner's train step on one machine: the sides alternate, one process each.

    python -m benchmarks.step_ab --trees=/work/wt/base,. --model=cifar10 --batch=64 \\
        --modes=autodiff,reversible --rounds=2
    python -m benchmarks.step_ab --trees=. --model=bijective_released --input=32 --batch=2 \\
        --blocks=preset --modes=autodiff --cache_dir=/tmp/cache   # compile: first, cached

Each (round, tree, mode) runs in a fresh process with the tree first on PYTHONPATH,
so a shared, loaded machine slows both sides alike: compare the rows of one run,
not runs of different days. A process compiles the step of `benchmarks.common.TrainStep`
(experiments/configs/<model>.py, synthetic uint8 batches, pmap on one device), then
times --steps steps back to back (the loss after them is the same on every side
where the results are). Columns: compile s (trace + lower + compile; with --cache_dir
each process reads and fills that persistent compilation cache, so round 2 shows the
cached compile), s/step, images/s, XLA temp GiB (memory analysis), peak RSS GiB of
the process.
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r'''
import json, resource, sys
import jax
args = json.loads(sys.argv[1])
if args['cache_dir']:
  jax.config.update('jax_compilation_cache_dir', args['cache_dir'])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
from benchmarks import common
config = common.experiment_config(args['model'], batch_size=args['batch'], smoke=args['smoke'],
                                  backprop=args['mode'], blocks=args['blocks'])
if args['input']:
  config.model.input_shape = (args['input'], args['input'], 3)
if args['block_scan']:
  config.model.block_scan = args['block_scan']
step = common.TrainStep(config)
compiled = step.compile(args['batch'])
seconds, loss = step.time(compiled, min_seconds=1e9, max_steps=args['steps'])   # exactly that many
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print('RESULT ' + json.dumps({'compile_s': compiled.compile_s, 'step_s': seconds,
                              'temp': compiled.temp_bytes, 'rss': rss, 'loss': loss}))
'''


def run_side(tree, mode, args):
  env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), TF_CPP_MIN_LOG_LEVEL='2')
  child_args = {'model': args.model, 'batch': args.batch, 'smoke': args.smoke, 'mode': mode,
                'blocks': None if args.blocks == 'preset' else args.blocks.split(','),
                'block_scan': args.block_scan, 'cache_dir': args.cache_dir,
                'steps': args.steps, 'input': args.input}
  out = subprocess.run([sys.executable, '-c', CHILD, json.dumps(child_args)], env=env,
                       capture_output=True, text=True, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')]
  if not lines:
    return {'error': (out.stderr.strip().splitlines() or ['?'])[-1]}
  return json.loads(lines[-1][len('RESULT '):])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--trees', default='.', help='comma-separated checkouts (the sides)')
  parser.add_argument('--model', default='cifar10')
  parser.add_argument('--smoke', action='store_true', help='the shrunken layout (common.py)')
  parser.add_argument('--blocks', default='3,3,3', help="blocks per stage, or 'preset'")
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--modes', default='autodiff,reversible')
  parser.add_argument('--input', type=int, default=0, help='images of input x input x 3')
  parser.add_argument('--block_scan', default='', help="'', auto, unrolled or rolled")
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--cache_dir', default='')
  parser.add_argument('--steps', type=int, default=4,
                      help='timed steps (after 3 untimed); the loss is after all of them')
  args = parser.parse_args()
  print(f'| round | tree | mode | compile s | s/step | images/s | XLA temp GiB | '
        f'peak RSS GiB | loss |')
  print('|---|---|---|---|---|---|---|---|---|')
  for r in range(args.rounds):
    for tree in args.trees.split(','):
      for mode in args.modes.split(','):
        row = run_side(tree, mode, args)
        if 'error' in row:
          print(f'| {r} | {tree} | {mode} | error: {row["error"]} |', flush=True)
          continue
        print(f'| {r} | {tree} | {mode} | {row["compile_s"]:.1f} | {row["step_s"]:.3f} | '
              f'{args.batch / row["step_s"]:.1f} | {row["temp"] / 2**30:.3f} | '
              f'{row["rss"] / 2**30:.2f} | {row["loss"]:.5f} |', flush=True)


if __name__ == '__main__':
  main()
