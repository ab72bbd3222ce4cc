"""Where the runner's train step spends its time: XLA's ops by kind, from a JAX profile.

    python -m benchmarks.profile_step --model=cifar10 --mode=autodiff --batch=64
    python -m benchmarks.profile_step --drop_barriers   # as XLA:CPU compiles by default

Runs 1 + --steps steps of `common.TrainStep` (the step `experiments.main` compiles;
synthetic images on the device) under `jax.profiler.trace` after warm-up, and prints the
total time of the device's op events per kind: an op's name without its number
(`transpose_copy_fusion.12` -> `transpose_copy_fusion`; XLA:CPU's convolutions are
`ynn_fusion`s), per step. --drop_barriers compiles without
`compiler_options.for_platform` (docs/reversible.md: why it matters).
"""
import argparse
import collections
import glob
import os
import re
import tempfile

import jax

from benchmarks import common, tables


def op_seconds(trace_dir: str) -> collections.Counter:
  """{op kind: seconds} over the events of a profile that name an XLA op (`hlo_op`)."""
  path, = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True)
  kinds = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      for event in line.events:
        op = dict(event.stats).get('hlo_op')
        if op:
          kinds[re.sub(r'\.\d+$', '', op)] += event.duration_ns / 1e9
  return kinds


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='cifar10', help='a name in experiments/configs/')
  parser.add_argument('--mode', default='autodiff', help='autodiff, remat or reversible')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--blocks', default='preset', help="per stage, or 'preset'")
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--top', type=int, default=12, help='op kinds printed')
  parser.add_argument('--drop_barriers', action='store_true',
                      help="XLA:CPU's default: optimization barriers removed before fusion")
  args = parser.parse_args(argv)
  blocks = None if args.blocks == 'preset' else args.blocks.split(',')
  config = common.experiment_config(args.model, batch_size=args.batch, backprop=args.mode,
                                    train_dtype='float32', blocks=blocks)
  options = {'xla_disable_hlo_passes': ''} if args.drop_barriers else None
  step = common.TrainStep(config, compiler_options=options)
  compiled = step.compile(args.batch)
  step.time(compiled, min_seconds=0, max_steps=1, warmup=1)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):   # 1 + --steps steps
      seconds, _ = step.time(compiled, min_seconds=0, max_steps=args.steps, warmup=0)
    kinds = op_seconds(trace_dir)
  total, steps = sum(kinds.values()), 1 + args.steps
  rows = [{'kind': kind, 's': s / steps, 'share': 100 * s / total}
          for kind, s in kinds.most_common(args.top)]
  rows.append({'kind': 'all ops', 's': total / steps, 'share': 100.0})
  print(f'{args.model} {args.mode} batch {args.batch}: {seconds:.2f} s/step wall, compile '
        f'{compiled.compile_s:.1f} s, XLA temp {compiled.temp_bytes / common.GIB:.3f} GiB'
        f'{" (barriers dropped)" if args.drop_barriers else ""}')
  print(tables.format_table(rows, [('kind', 'op kind', ''), ('s', 's/step', '.3f'),
                                   ('share', '%', '.1f')], markdown=True))


if __name__ == '__main__':
  main()
