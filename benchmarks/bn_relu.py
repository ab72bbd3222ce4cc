"""What the fused BN-ReLU (`model.fused_bn_relu`) saves, from XLA's analyses: before and after.

    python -m benchmarks.bn_relu                                    # the defaults below
    python -m benchmarks.bn_relu --model=bijective_released --blocks=2,2,2,2 --batch=8 \
        --modes=autodiff,reversible,remat --markdown

Every row is measured twice, with fused_bn_relu False (autodiff of BN then ReLU: before)
and True (model/bn_relu.py: after), in bfloat16 training (the runner's GPU policy):

- 'F, stage k': one F of stage k's alike blocks (float32 input u, as in the coupling)
  at --batch: the activations `jax.vjp` keeps for the backward (residuals with a batch
  axis; MB per image, and bytes per value of u), and of its compiled forward + backward
  (jit of the gradient of a sum of F(u)): XLA's bytes accessed and temp bytes.
- 'F in the autodiff scan, stage k': what autodiff of the whole network keeps per alike
  block of stage k (residuals of the rolled block scan, as on GPU; shapes only).
- 'train step': the runner's compiled train step (`common.TrainStep`, the config's blocks or
  --blocks) per backprop mode: XLA's bytes accessed (cost analysis) and temp bytes (memory
  analysis); at a small batch the parameters' share (gradients, SGD update) is large, so
  the columns 'MB/img less' give before - after.
- 'per stage-k block': (step with k more blocks in a stage - step) / k (--per_block): what
  one more block costs, e.g. the residuals autodiff keeps per block (XLA temp).

Nothing is run, only compiled, so the numbers are those of the compiling backend (XLA:CPU on
this machine: its fusion decides the bytes accessed; a GPU fuses differently).
"""
import argparse

import jax
import jax.numpy as jnp

from benchmarks import common, tables
from irevnet_jax import nets
from irevnet_jax.model import blocks, compiler_options, presets

MB = 1e6


def _cost_bytes(compiled):
  """XLA's 'bytes accessed' of a compiled program (None where the backend gives none)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return (cost or {}).get('bytes accessed')


def _options():
  return compiler_options.for_platform(jax.devices()[0].platform)


def f_row(model_config, stage: int, batch: int, fused: bool):
  """The numbers of one F of stage `stage`'s alike blocks (see the module docstring)."""
  config = model_config.copy_and_resolve_references()
  config.dtype, config.fused_bn_relu = 'bfloat16', fused
  arch = presets.layout(config)
  spec = arch.stages[stage].rest or arch.stages[stage].first
  f = blocks.make_bottleneck(arch, spec)
  variables = blocks.init_bottleneck(f, spec, jax.random.PRNGKey(0))
  u = jax.random.normal(jax.random.PRNGKey(1), (batch, *spec.spatial, spec.f_in_channels),
                        blocks.stream_dtype(arch))
  key = jax.random.PRNGKey(2)

  def apply(params, u):
    return blocks.apply_bottleneck(f, {**variables, 'params': params}, u, True, key)[0]

  _, f_vjp = jax.vjp(apply, variables['params'], u)
  # Activations: residuals with a leading batch axis (the others: kernels, per-channel).
  residuals = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(f_vjp)
                  if leaf.ndim == u.ndim and leaf.shape[0] == batch)
  grad = jax.jit(jax.grad(lambda p, u: jnp.sum(apply(p, u)), argnums=(0, 1)))
  compiled = grad.lower(variables['params'], u).compile(compiler_options=_options())
  temp = compiled.memory_analysis().temp_size_in_bytes
  values = u.size // batch
  return {'what': f'F, stage {stage}', 'fused': fused, 'batch': batch,
          'saved_mb_img': residuals / batch / MB, 'saved_b_value': residuals / batch / values,
          'bytes_mb_img': _cost_bytes(compiled) / batch / MB,
          'temp_mb_img': temp / batch / MB}


def scan_row(model_config, stage: int, batch: int, fused: bool, scanned: int = 4,
             model_fields=None):
  """The activations that autodiff of the network keeps per alike block of stage `stage`
  (the rolled scan's stacked residuals; `scanned` such blocks, one block in other stages),
  from shapes alone (`jax.eval_shape` of `jax.vjp`): nothing is compiled or run.
  `model_fields`: {field: value} set in the model config too."""
  config = model_config.copy_and_resolve_references()
  config.dtype, config.fused_bn_relu, config.block_scan = 'bfloat16', fused, 'rolled'
  config.update(model_fields or {})
  config.backprop = 'autodiff'
  config.blocks = tuple(1 + scanned if i == stage else 1 for i in range(len(config.blocks)))
  net = nets.build(config)
  image = lambda n: jax.ShapeDtypeStruct((n, *net.input_shape), jnp.float32)
  variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), image(1))

  def backward(variables, x):
    def loss(params):
      (logits, _), _ = net.forward({**variables, 'params': params}, x, train=True,
                                   rngs={'dropout': jax.random.PRNGKey(0)})
      return jnp.sum(logits)
    return jax.vjp(loss, variables['params'])[1]

  f_vjp = jax.eval_shape(backward, variables, image(batch))
  stacked = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(f_vjp)
                if leaf.shape[:2] == (scanned, batch))
  spec = presets.layout(config).stages[stage].rest
  values = spec.spatial[0] * spec.spatial[1] * spec.f_in_channels
  per_image = stacked / scanned / batch
  return {'what': f'F in the autodiff scan, stage {stage}', 'fused': fused, 'batch': batch,
          'saved_mb_img': per_image / MB, 'saved_b_value': per_image / values}


def step_row(model: str, mode: str, batch: int, blocks_per_stage, fused: bool,
             stream_dtype: str = 'float32'):
  """The numbers of the runner's compiled train step (see the module docstring)."""
  config = common.experiment_config(model, batch_size=batch, backprop=mode,
                                    train_dtype='bfloat16', blocks=blocks_per_stage)
  config.model.fused_bn_relu, config.model.stream_dtype = fused, stream_dtype
  compiled = common.TrainStep(config).compile(batch)
  return {'what': f'train step, {mode}, blocks {",".join(map(str, config.model.blocks))}',
          'fused': fused, 'batch': batch,
          'bytes_mb_img': _cost_bytes(compiled.fn) / batch / MB,
          'temp_mb_img': compiled.temp_bytes / batch / MB}


def per_block_row(shallow, deep, added: int, stage: int):
  """What each of the `added` stage-`stage` blocks of `deep` (a step_row) adds to `shallow`."""
  mode = shallow['what'].split(', ')[1]
  return {**shallow, 'what': f'train step, {mode}, per stage-{stage} block',
          **{key: (deep[key] - shallow[key]) / added for key in ('bytes_mb_img', 'temp_mb_img')}}


def add_ratios(rows):
  """Each 'after' row gets after / before and before - after of its numbers."""
  before = {}
  for row in rows:
    if not row['fused']:
      before[row['what']] = row
      continue
    for key in ('saved_mb_img', 'bytes_mb_img', 'temp_mb_img'):
      old = before.get(row['what'], {}).get(key)
      if old and row.get(key) is not None:
        row[key.replace('_mb_img', '_x')] = row[key] / old
        row[key.replace('_mb_img', '_less')] = old - row[key]
  for row in rows:
    row['side'] = 'after (fused)' if row['fused'] else 'before (plain)'
  return rows


COLUMNS = [('what', 'what', ''), ('side', 'BN-ReLU', ''), ('batch', 'batch', 'd'),
           ('saved_mb_img', 'saved activations MB/img', '.3f'),
           ('saved_b_value', 'B per value of u', '.2f'), ('saved_x', 'after/before', '.3f'),
           ('bytes_mb_img', 'bytes accessed MB/img', '.2f'), ('bytes_x', 'after/before', '.3f'),
           ('bytes_less', 'MB/img less', '.2f'),
           ('temp_mb_img', 'XLA temp MB/img', '.2f'), ('temp_x', 'after/before', '.3f'),
           ('temp_less', 'MB/img less', '.2f')]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='bijective_released', help='in experiments/configs/')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--stages', default='0,1,2,3', help="stages whose F is measured ('' none)")
  parser.add_argument('--blocks', default='2,2,2,2',
                      help="train step: blocks per stage, or 'preset' (100 blocks: slow on CPU)")
  parser.add_argument('--modes', default='autodiff,reversible,remat', help="train step ('' none)")
  parser.add_argument('--per_block', default='autodiff:2:4',
                      help="mode:stage:k: that mode's step again with k more blocks in that "
                           "stage, for the numbers per block ('' none)")
  parser.add_argument('--stream_dtype', default='float32',
                      help="model.stream_dtype: 'bfloat16' makes F's input u bfloat16 too")
  parser.add_argument('--markdown', action='store_true')
  args = parser.parse_args(argv)
  model_config = common.experiment_config(args.model, batch_size=args.batch).model
  model_config.stream_dtype = args.stream_dtype
  blocks_per_stage = (list(model_config.blocks) if args.blocks == 'preset'
                      else [int(b) for b in args.blocks.split(',')])
  rows = []

  def add(row):
    rows.append(row)
    print({k: v for k, v in row.items() if k != 'fused'} | {'fused': row['fused']}, flush=True)

  for stage in [int(s) for s in args.stages.split(',') if s]:
    for fused in (False, True):
      add(f_row(model_config, stage, args.batch, fused))
    for fused in (False, True):
      add(scan_row(model_config, stage, args.batch, fused))
  steps = {}
  for mode in [m for m in args.modes.split(',') if m]:
    for fused in (False, True):
      steps[mode, fused] = step_row(args.model, mode, args.batch, blocks_per_stage, fused,
                                    args.stream_dtype)
      add(steps[mode, fused])
  if args.per_block:
    mode, stage, added = args.per_block.split(':')
    stage, added = int(stage), int(added)
    deeper = list(blocks_per_stage)
    deeper[stage] += added
    for fused in (False, True):
      shallow = steps.get((mode, fused)) or step_row(args.model, mode, args.batch,
                                                     blocks_per_stage, fused, args.stream_dtype)
      deep = step_row(args.model, mode, args.batch, deeper, fused, args.stream_dtype)
      add(deep)
      add(per_block_row(shallow, deep, added, stage))
  print(f'\n{args.model}, bfloat16 training, {args.stream_dtype} streams, '
        f'{common.device_name()}, jax {jax.__version__}')
  print(tables.format_table(add_ratios(rows), COLUMNS, markdown=args.markdown))


if __name__ == '__main__':
  main()
