"""How far this port's training is from the authors' recipes, one table per known difference.

    python -m benchmarks.recipe_differences                       # all tables, ~4 min on 2 CPU cores
    python -m benchmarks.recipe_differences --tables=schedule,bn_variance

- `schedule`: the configs count an epoch as N / B steps of full batches; the authors'
  scripts run ceil(N / B) steps an epoch, the last one partial (PyTorch's DataLoader
  without drop_last), and the paper counts iterations. Per config: the step where each
  rate phase starts here and there, and how many steps of the run have another rate.
- `momentum`: the authors' CIFAR script builds a new SGD every epoch, so its momentum
  restarts at each epoch; the runner keeps one (`restart_momentum_each_epoch=False`).
  From the same state at an epoch start of a digits run (the runner's train step), the
  next k updates with and without the restart: || sum of the k updates' difference || /
  || sum of the k updates without restart ||.
- `restart_cost`: one jitted SGD update of the cifar10 model's 6.3M parameters with and
  without the restart (its 200 epoch starts compared with the count): XLA's bytes and flops,
  and the fastest time, sides alternating.
- `bn_variance`: PyTorch updates BN's running variance with the unbiased batch variance
  (n / (n - 1), n = examples per device x H x W of the layer), Flax and this port with the
  biased one; in the steady state the running variances differ by 1 / (n - 1). Per recipe:
  n and that difference over the BN layers, and the measured change of eval-mode logits
  and z when every running variance is scaled by the largest factor.
"""
import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common, tables
from experiments.configs import bijective, bijective_released, cifar10, digits
from irevnet_jax import nets
from irevnet_jax.model import presets
from irevnet_jax.train import optimizer
from irevnet_jax.train import state as state_lib

TRAIN_EXAMPLES = {'cifar10': 50_000, 'imagenet2012': 1_281_167}   # TFDS train splits


def _their_epoch_rate(config, their_steps_per_epoch):
  """step -> the authors' rate: base x decay^(boundaries <= epoch), epoch = step // steps."""
  boundaries = np.asarray(config.lr_boundaries, np.float64)

  def rate(steps):
    epochs = steps // their_steps_per_epoch
    return config.learning_rate * config.lr_decay_factor ** (
        (epochs[:, None] >= boundaries[None, :]).sum(1))
  return rate


# (name, config, the authors' recipe: (description, steps per epoch or None, total steps,
#  step -> rate)); `None` steps per epoch: the paper's iteration counts.
def _recipes():
  rows = []
  for name, module, theirs in (('cifar10', cifar10, 'CIFAR_main.py'),
                               ('bijective_released', bijective_released, 'ILSVRC_main.py')):
    config = module.get_config()
    n, b = TRAIN_EXAMPLES[config.dataset.name], config.batch_size
    per_epoch = math.ceil(n / b)
    rows.append((name, config, f'{theirs}: {per_epoch} steps/epoch, last batch {n % b}',
                 per_epoch * int(config.num_epochs), _their_epoch_rate(config, per_epoch)))
  config = bijective.get_config()
  paper = lambda steps: config.learning_rate * 0.1 ** (steps // 160_000)
  rows.append(('bijective', config, 'paper: 600k iterations, / 10 every 160k', 600_000, paper))
  return rows


def schedule_table():
  rows = []
  for name, config, theirs, their_total, their_rate in _recipes():
    n = TRAIN_EXAMPLES[config.dataset.name]
    total, per_epoch = optimizer.training_steps(config, n)
    ours = np.asarray(jax.vmap(optimizer.learning_rate_schedule(config, total, per_epoch))(
        jnp.arange(total)))
    theirs_rates = their_rate(np.arange(their_total))
    starts = lambda r: np.flatnonzero(~np.isclose(r[1:], r[:-1], rtol=1e-6)) + 1
    ours_starts, their_starts = starts(ours), starts(theirs_rates)
    phases = ', '.join(f'{a} / {t} ({a - t:+d})' for a, t in zip(ours_starts, their_starts))
    common_steps = min(total, their_total)
    other_rate = int((~np.isclose(ours[:common_steps], theirs_rates[:common_steps],
                                  rtol=1e-6)).sum()) + abs(total - their_total)
    rows.append({'config': name, 'theirs': theirs, 'steps/epoch here': f'{per_epoch:g}',
                 'phase starts here / theirs (offset)': phases,
                 'total steps here / theirs': f'{total} / {their_total} ({total - their_total:+d})',
                 'steps at another rate or not run': f'{other_rate} ({other_rate / their_total:.3%})'})
  return rows


def _displacement(start, end):
  leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, b: b - a, start, end))
  return np.concatenate([np.ravel(x).astype(np.float64) for x in leaves])


def momentum_table(epochs=(1, 10, 20), ks=(1, 3, 10, None)):
  """Rows per epoch start of the digits config: relative difference of the next k updates."""
  config = digits.get_config()
  source, program = common.runner_program(config)
  backend, local_batch = program.backend, config.batch_size
  state = backend.put_state(state_lib.create_state(program.train_net, program.tx, config.seed))
  batches = lambda start: map(backend.put_batch, source.train_batches(
      local_batch, 0, 1, seed=config.seed, start_step=start))
  rows, step = [], 0
  for epoch in epochs:
    start = optimizer.epoch_start_step(epoch, program.steps_per_epoch)
    for batch in batches(step):
      if step == start:
        break
      state, _ = program.train_step(state, batch)
      step += 1
    length = optimizer.epoch_start_step(epoch + 1, program.steps_per_epoch) - start
    host = backend.to_host(state)
    restarted = optax.tree_utils.tree_set(host['opt_state'], trace=jax.tree_util.tree_map(
        np.zeros_like, optax.tree_utils.tree_get(host['opt_state'], 'trace')))
    paths = {}
    for label, opt_state in (('kept', host['opt_state']), ('restarted', restarted)):
      path_state, params = backend.put_state(dict(host, opt_state=opt_state)), []
      for batch, _ in zip(batches(start), range(length)):
        path_state, _ = program.train_step(path_state, batch)
        params.append(backend.to_host(path_state['params']))
      paths[label] = [_displacement(host['params'], p) for p in params]
    row = {'epoch start': f'{epoch} (step {start})'}
    for k in ks:
      kept, restarted = paths['kept'][(k or length) - 1], paths['restarted'][(k or length) - 1]
      size = f'{np.linalg.norm(restarted - kept) / np.linalg.norm(kept):.1%}'
      row[f'next {k}' if k else 'whole epoch'] = size if k else f'{size} ({length} steps)'
    rows.append(row)
  return rows


def restart_cost_table(repeats=50):
  """One jitted SGD update (+ apply) of the cifar10 model's parameters, with and without
  `restart_momentum_each_epoch` (200 epoch starts): XLA's cost analysis of the compiled
  update (bytes accessed, flops) and the fastest of `repeats` runs, sides alternating."""
  config = cifar10.get_config()
  net = nets.build(config.model)
  params = jax.jit(net.init)(jax.random.PRNGKey(0),
                             jnp.zeros((1, *net.input_shape)))['params']
  n = TRAIN_EXAMPLES['cifar10']
  total, per_epoch = optimizer.training_steps(config, n)
  schedule = optimizer.learning_rate_schedule(config, total, per_epoch)
  sides = {'one SGD (default)': optimizer.make_optimizer(config, schedule),
           'restart each epoch': optimizer.make_optimizer(
               config, schedule, optimizer.epoch_starts(total, per_epoch))}
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 1e-3), params)
  compiled, states, times = {}, {}, {name: [] for name in sides}
  for name, tx in sides.items():
    def step(params, state, tx=tx):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state
    states[name] = (params, tx.init(params))
    compiled[name] = jax.jit(step).lower(*states[name]).compile()
  for _ in range(repeats):
    for name, fn in compiled.items():
      start = time.perf_counter()
      states[name] = jax.block_until_ready(fn(*states[name]))
      times[name].append(time.perf_counter() - start)
  rows = []
  for name, fn in compiled.items():
    cost = fn.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    rows.append({'optimizer': name,
                 'parameters': f'{sum(p.size for p in jax.tree_util.tree_leaves(params)):,}',
                 'MB accessed (XLA)': f'{cost["bytes accessed"] / 2**20:.1f}',
                 'Mflop (XLA)': f'{cost["flops"] / 1e6:.1f}',
                 'ms per update (fastest)': f'{1e3 * min(times[name]):.2f}'})
  return rows


def _bn_inputs(arch):
  """(H, W) of every BN layer's input: F's (leading BN unless the network's first block;
  two after its strided conv) per block, then the head's."""
  sizes = []
  for stage in arch.stages:
    for spec, count in ((stage.first, 1), (stage.rest, stage.num_rest)):
      if spec is None:
        continue
      h, w = spec.spatial
      after = (h // spec.stride, w // spec.stride)
      sizes += count * (([] if spec.first else [(h, w)]) + [after, after])
  return sizes + [tuple(arch.z_shape[:2])]


def _eval_change(model, factor, batch=8):
  """Relative change of eval-mode (logits, z) of `model` (random init, running statistics
  of three train-mode batches) when every BN running variance is multiplied by `factor`."""
  model = model.copy_and_resolve_references()
  with model.unlocked():
    model.block_scan = 'rolled'   # compiles far faster; the same arithmetic
    model.dropout_rate = 0.0
  net = nets.build(model)
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, batch, *net.input_shape))
  variables = jax.jit(net.init)(jax.random.PRNGKey(1), images[0, :1])
  train_forward = jax.jit(lambda v, x: net.forward(v, x, train=True)[1]['batch_stats'])
  for x in images[1:]:
    variables = dict(variables, batch_stats=train_forward(variables, x))
  scaled = dict(variables, batch_stats=jax.tree_util.tree_map_with_path(
      lambda path, v: v * factor if path[-1].key == 'var' else v, variables['batch_stats']))
  forward = jax.jit(net.forward)
  (logits, z), (logits_s, z_s) = forward(variables, images[0]), forward(scaled, images[0])
  rel = lambda a, b: float(jnp.linalg.norm(b - a) / jnp.linalg.norm(a))
  return rel(logits, logits_s), rel(z, z_s)


def bn_variance_table():
  """Per recipe: n = examples per device x H x W over the BN layers, 1 / (n - 1), and (CIFAR
  only: the 125M model is slow on a CPU) the effect on eval outputs of the largest factor."""
  rows = []
  for name, model, per_device, last in (
      ('cifar10 (CIFAR_main.py, 1 GPU)', presets.cifar10(), 128, 50_000 % 128),
      ('bijective_released (ILSVRC_main.py, 256 on 4 GPUs)', presets.bijective_released(),
       64, None)):
    sizes = _bn_inputs(presets.layout(model))
    counts = sorted(b * h * w for b in (per_device, last) if b for h, w in sizes)
    gap = lambda n: 1 / (n - 1)
    row = {'recipe': name, 'BN layers': len(sizes),
           'n: smallest / largest': f'{counts[0]} / {counts[-1]}',
           '1/(n-1): largest / smallest': f'{gap(counts[0]):.2e} / {gap(counts[-1]):.2e}'}
    if name.startswith('cifar10'):
      row['eval logits, z change (every var x largest)'] = '{:.1e}, {:.1e}'.format(
          *_eval_change(model, 1 + gap(counts[0])))
    rows.append(row)
  return rows


TABLES = {'schedule': schedule_table, 'momentum': momentum_table,
          'restart_cost': restart_cost_table, 'bn_variance': bn_variance_table}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tables', default=','.join(TABLES),
                      help=f'comma-separated, of {sorted(TABLES)}')
  parser.add_argument('--markdown', action='store_true', help='tables for docs/training.md')
  args = parser.parse_args(argv)
  for name in args.tables.split(','):
    if name not in TABLES:
      parser.error(f'--tables: unknown table {name!r}; choose from {sorted(TABLES)}.')
    rows = TABLES[name]()
    print(f'\n{name}:')
    print(tables.format_table(rows, [(key, key, '') for key in rows[0]],
                              markdown=args.markdown))


if __name__ == '__main__':
  main()
