"""Reversible vs autodiff gradients at depth, in bfloat16 and float32 training, with float32
or bfloat16 coupling streams.

    python -m benchmarks.bf16_gradients                 # bijective, 64x64, batch 8, 100 blocks
    python -m benchmarks.bf16_gradients --model=bijective_released --size=32 --batch=4
    python -m benchmarks.bf16_gradients --streams=float32,bfloat16 --parts=all

experiments/configs/<model>.py with every block, at a small input, under the runner's
precision policy: one train-mode gradient of the mean cross entropy per (dtype, streams,
mode), from the same float32 variables and batch. Per stage, head and all: cosine and
||g_rev - g_ad|| / ||g_ad||, next to bfloat16's own effect (relative L2 from the float32
autodiff gradient, the reference), and the relative error of the model's own inversion
(forward then invert in the same dtypes, inference mode) on the 'all' row. bfloat16
streams (`model.stream_dtype`) apply to bfloat16 training only. Block scans run rolled, as
on GPU/TPU.
"""
import argparse
import time

import jax
import numpy as np
import optax

from benchmarks import common, tables
from irevnet_jax import nets
from irevnet_jax.model import compiler_options, precision

DTYPES = ('bfloat16', 'float32')
STREAMS = ('float32',)


def gradients(model: str, dtype: str, backprop: str, size: int, batch: int,
              variables=None, block_scan: str = 'rolled', streams: str = 'float32'):
  """(float32 variables, gradient tree at the params, relative inversion error) of one
  train-mode step."""
  config = common.experiment_config(model, batch_size=batch, backprop=backprop,
                                    train_dtype=dtype)
  config.model.input_shape = (size, size, config.model.input_shape[-1])
  config.model.block_scan = block_scan
  config.model.stream_dtype = streams
  net = nets.build(precision.train_model_config(config.model, config.train_dtype,
                                                    config.train_precision))
  x, labels = common.synthetic_batch(net, batch)
  if variables is None:
    variables = jax.jit(net.init)(jax.random.PRNGKey(0), x[:1])

  def loss(params):
    (logits, _), _ = net.forward({'params': params, 'batch_stats': variables['batch_stats']}, x,
                                 train=True, rngs={'dropout': jax.random.PRNGKey(1)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grads = jax.jit(jax.grad(loss)).lower(variables['params']).compile(
      compiler_options=compiler_options.NO_BACKEND_OPTIMIZATION)(variables['params'])
  images = np.asarray(x, np.float64)
  x_back = jax.jit(lambda v, x: net.invert(v, net.forward(v, x)[1])).lower(variables, x).compile(
      compiler_options=compiler_options.NO_BACKEND_OPTIMIZATION)(variables, x)
  inversion = float(np.linalg.norm(np.asarray(x_back, np.float64) - images) /
                    np.linalg.norm(images))
  return variables, jax.tree_util.tree_map(lambda g: np.asarray(g, np.float64), grads), inversion


def compare(reference, other):
  """(cosine similarity, relative L2 error of `other`) over all leaves of two trees."""
  a, b = (np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(t)])
          for t in (reference, other))
  cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
  return cosine, float(np.linalg.norm(b - a) / np.linalg.norm(a))


def groups(grads):
  """{'stage k' / 'head' / 'all': subtree} of a gradient tree."""
  stages = {k.replace('stages_', 'stage '): v for k, v in sorted(grads.items())
            if k.startswith('stages_')}
  head = {k: v for k, v in grads.items() if not k.startswith('stages_')}
  return {**stages, 'head': head, 'all': grads}


def measure(model, size, batch, dtypes=DTYPES, block_scan='rolled', report=print,
            streams=STREAMS, parts=None):
  """Rows {dtype, streams, part, blocks, cosine, rel_l2, ad_vs_f32, rev_vs_f32, inversion},
  one per (dtype, streams, part); bfloat16 streams only for bfloat16 training; `parts`
  (e.g. ('all',)) keeps those rows only."""
  config = common.experiment_config(model, batch_size=batch)
  blocks = dict(zip((f'stage {i}' for i in range(len(config.model.blocks))),
                    config.model.blocks))
  sides = [(d, s) for d in dtypes for s in streams if s == 'float32' or d == 'bfloat16']
  variables, results, inversion = None, {}, {}
  for side in sides:
    for mode in ('autodiff', 'reversible'):
      start = time.perf_counter()
      variables, results[(*side, mode)], inversion[side] = gradients(
          model, side[0], mode, size, batch, variables, block_scan, side[1])
      report(f'{side[0]} compute, {side[1]} streams, {mode}: '
             f'{time.perf_counter() - start:.1f} s')
  rows = []
  f32 = (groups(results['float32', 'float32', 'autodiff'])
         if ('float32', 'float32') in sides else None)
  for side in sides:
    ad, rev = groups(results[(*side, 'autodiff')]), groups(results[(*side, 'reversible')])
    for part in ad:
      if parts and part not in parts:
        continue
      cosine, rel = compare(ad[part], rev[part])
      rows.append({'dtype': side[0], 'streams': side[1], 'part': part,
                   'blocks': blocks.get(part), 'cosine': cosine, 'rel_l2': rel,
                   'inversion': inversion[side] if part == 'all' else None})
      if side[0] != 'float32' and f32:
        rows[-1].update(ad_vs_f32=compare(f32[part], ad[part])[1],
                        rev_vs_f32=compare(f32[part], rev[part])[1])
  return rows


COLUMNS = [('dtype', 'train dtype', ''), ('streams', 'streams', ''), ('part', 'parameters', ''),
           ('blocks', 'blocks', 'd'),
           ('cosine', 'cosine(rev, ad)', '.6f'), ('rel_l2', 'rel. L2 rev vs ad', '.2e'),
           ('ad_vs_f32', 'rel. L2 ad vs ad f32', '.2e'),
           ('rev_vs_f32', 'rel. L2 rev vs ad f32', '.2e'),
           ('inversion', 'inversion rel. error', '.2e')]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='bijective')
  parser.add_argument('--size', type=int, default=64, help='input height and width')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--dtypes', default=','.join(DTYPES))
  parser.add_argument('--streams', default=','.join(STREAMS), help='float32,bfloat16')
  parser.add_argument('--parts', default='', help="e.g. 'all' (default: every part)")
  parser.add_argument('--block_scan', default='rolled', help='auto|unrolled|rolled|unroll:<k>')
  args = parser.parse_args(argv)
  rows = measure(args.model, args.size, args.batch, tuple(args.dtypes.split(',')),
                 args.block_scan, streams=tuple(args.streams.split(',')),
                 parts=tuple(filter(None, args.parts.split(','))))
  print(f'\n{args.model}, {args.size}x{args.size}, batch {args.batch}, train mode, '
        f'{jax.default_backend()}, jax {jax.__version__}\n')
  print(tables.format_table(rows, COLUMNS, markdown=True))


if __name__ == '__main__':
  main()
