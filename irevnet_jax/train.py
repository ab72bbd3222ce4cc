"""Training and evaluation: per-device steps, and the loop that runs them under `jax.pmap`.

    result = train_and_evaluate(config, workdir)   # config: experiments/configs/*.py

The per-device steps (`train_step`, `eval_step`) use collectives by axis name
only ('batch'), so `jax.pmap` (used here) or `jax.jit` + `shard_map` can wrap
them unchanged. The train state is a dict
{'step', 'params', 'batch_stats', 'opt_state', 'rng'}: replicated on the
devices during training, host numpy in checkpoints.

The loop reads top to bottom: config checks, input, model, optimizer, restore,
then steps with logging, evaluation and checkpoints, then a final evaluation.
"""
import collections
import copy
import functools
import math
import signal
import threading
from typing import Any, Dict, NamedTuple

from absl import logging
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import irevnet_jax
from irevnet_jax import checkpoints, collectives, input_pipeline, metrics

AXIS = 'batch'   # the device axis: gradients, metrics and BN statistics are averaged over it

# Every experiment config has exactly these top-level fields (defaults in
# experiments/configs/common.py); anything else is a typo.
CONFIG_FIELDS = frozenset({
    'model', 'dataset', 'batch_size', 'eval_batch_size', 'num_train_steps', 'num_epochs',
    'learning_rate', 'lr_schedule', 'lr_boundaries', 'lr_decay_factor', 'warmup_epochs',
    'momentum', 'nesterov', 'weight_decay', 'log_every_steps', 'eval_every_steps',
    'checkpoint_every_steps', 'keep_checkpoints', 'seed', 'half_precision', 'num_devices',
    'async_checkpoints',
})
LR_SCHEDULES = ('step', 'cosine')


class Preempted(Exception):
  """Raised after a SIGTERM (or a multi-host preemption notice) once the state is saved."""

  def __init__(self, step):
    super().__init__(f'Preempted: saved a checkpoint at step {step}; rerun the same command '
                     f'to resume.')
    self.step = step


class Result(NamedTuple):
  state: Dict[str, Any]        # final host (numpy) train state
  eval_metrics: Dict[str, float]
  step: int


# ----------------------------------------------------------------------------- config


def check_config(config):
  """Rejects unknown or missing fields and values that cannot work, naming the field."""
  keys = set(config.keys())
  unknown, missing = sorted(keys - CONFIG_FIELDS), sorted(CONFIG_FIELDS - keys)
  if unknown:
    raise ValueError(f'Unknown config field(s) {unknown}; known fields are '
                     f'{sorted(CONFIG_FIELDS)}.')
  if missing:
    raise ValueError(f'Config is missing field(s) {missing}; start from '
                     f'experiments.configs.common.base_config(model), which sets them all.')
  if 'name' not in config.dataset:
    raise ValueError("Config field dataset.name is missing, e.g. dataset.name='digits'.")
  if config.lr_schedule not in LR_SCHEDULES:
    raise ValueError(f'lr_schedule={config.lr_schedule!r} is not one of {LR_SCHEDULES}.')
  for field in ('batch_size', 'eval_batch_size', 'keep_checkpoints'):
    if int(config[field]) < 1:
      raise ValueError(f'{field}={config[field]} must be a positive integer, e.g. 64.')
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ValueError(f'Set num_train_steps > 0 or num_epochs > 0 (got num_train_steps='
                     f'{config.num_train_steps}, num_epochs={config.num_epochs}).')
  if not 0.0 <= config.momentum < 1.0:
    raise ValueError(f'momentum={config.momentum} must be in [0, 1), e.g. 0.9.')
  if config.learning_rate <= 0:
    raise ValueError(f'learning_rate={config.learning_rate} must be positive, e.g. 0.1.')


def _divisible(field, value, by, what):
  if value % by:
    raise ValueError(
        f'{field}={value} is not divisible by the {by} {what}; use a multiple of {by}, '
        f'e.g. {field}={max(by, value - value % by)}.')


def select_devices(num_devices: int):
  """The local devices to train on: all of them, or the first `num_devices`."""
  local = jax.local_devices()
  if num_devices <= 0:
    return local
  if jax.process_count() > 1:
    raise ValueError(f'num_devices={num_devices} restricts devices in single-process runs '
                     f'only; use num_devices=0 with several processes.')
  if num_devices > len(local):
    raise ValueError(f'num_devices={num_devices} but only {len(local)} local devices exist; '
                     f'use num_devices<={len(local)} (0 = all).')
  return local[:num_devices]


def model_configs(config):
  """(train model config, eval model config): bfloat16 compute when half_precision; the
  eval net is always float32 at precision 'highest' (inversion needs it)."""
  train_model = copy.deepcopy(config.model)
  if config.half_precision:
    train_model.dtype = 'bfloat16'
  eval_model = copy.deepcopy(config.model)
  if 'dtype' in eval_model:
    eval_model.dtype = 'float32'
  if 'precision' in eval_model:
    eval_model.precision = 'highest'
  return train_model, eval_model


def training_steps(config, num_train_examples):
  """(total steps, steps per epoch) from num_train_steps or num_epochs."""
  steps_per_epoch = num_train_examples / config.batch_size
  if config.num_train_steps > 0:
    return int(config.num_train_steps), steps_per_epoch
  return int(math.ceil(config.num_epochs * steps_per_epoch)), steps_per_epoch


def learning_rate_schedule(config, total_steps, steps_per_epoch):
  """step -> rate: linear warm-up over warmup_epochs, then 'cosine' decay to 0 at the
  end, or 'step' decay by lr_decay_factor at each of lr_boundaries (in epochs)."""
  base = float(config.learning_rate)
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  boundaries = jnp.asarray([round(b * steps_per_epoch) for b in config.lr_boundaries] or [-1])
  has_boundaries = len(config.lr_boundaries) > 0
  factor = float(config.lr_decay_factor)
  cosine = config.lr_schedule == 'cosine'

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if cosine:
      t = jnp.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
      rate = base * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    elif has_boundaries:
      rate = base * factor ** jnp.sum(step >= boundaries)
    else:
      rate = jnp.full((), base)
    if warmup > 0:
      rate = jnp.where(step < warmup, base * (step + 1) / warmup, rate)
    return rate

  return schedule


def make_optimizer(config, schedule):
  """SGD with (Nesterov) momentum; L2 weight decay on all parameters, added to the
  gradient before the momentum as in the paper's PyTorch SGD."""
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))


# ----------------------------------------------------------------------------- state


def create_state(net, tx, seed: int, abstract: bool = False) -> dict:
  """Fresh host train state, the same on every process for the same seed.

  abstract=True: numpy zeros of the right shapes and dtypes, without running
  (and compiling) the initialisers: the target for restoring a checkpoint.
  """
  def init(seed):
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
    x = jnp.zeros((1, *net.input_shape), jnp.float32)
    variables = net.init(init_key, x)
    return {'step': jnp.zeros((), jnp.int32), 'params': variables['params'],
            'batch_stats': variables['batch_stats'],
            'opt_state': tx.init(variables['params']), 'rng': dropout_key}
  if abstract:
    shapes = jax.eval_shape(init, seed)
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  lowered = jax.jit(init, static_argnums=0).lower(seed)
  try:  # runs once: compile without backend optimisation (8x faster to compile on CPU)
    compiled = lowered.compile(compiler_options={'xla_backend_optimization_level': 0})
  except Exception:  # pylint: disable=broad-except
    compiled = lowered.compile()
  return jax.device_get(compiled())


def replicate(tree, devices):
  """Host tree -> one copy per device (leading axis len(devices))."""
  broadcast = jax.pmap(lambda _, t: t, in_axes=(0, None), devices=devices)
  return broadcast(np.arange(len(devices)), tree)


def unreplicate(tree):
  """Replicated device tree -> host numpy tree (the copy on the first local device)."""
  def first(x):
    return np.asarray(x.addressable_shards[0].data).reshape(x.shape[1:])
  return jax.tree_util.tree_map(first, tree)


def shard(batch, num_devices):
  """{(B, ...)} -> {(num_devices, B / num_devices, ...)}."""
  return jax.tree_util.tree_map(lambda a: a.reshape(num_devices, -1, *a.shape[1:]), batch)


# ----------------------------------------------------------------------------- steps


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(state, batch, *, net, tx, schedule, axis_name=AXIS):
  """One SGD step on this device's shard of the global batch.

  batch: {'image' (B, H, W, C), 'label' (B,)}. Gradients and metrics are
  averaged over `axis_name`; BN statistics too, when `net` was built with
  bn_axis_name=axis_name. Returns (new state, {'loss', 'accuracy', 'learning_rate',
  'param_norm'}); param_norm is the global L2 norm of the new parameters (the
  loop stops when it is not finite).
  """
  dropout_key = jax.random.fold_in(jax.random.fold_in(state['rng'], state['step']),
                                   lax.axis_index(axis_name))

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state['batch_stats']}
    (logits, _), new = net.forward(variables, batch['image'], train=True,
                                   rngs={'dropout': dropout_key})
    return cross_entropy(logits, batch['label']).mean(), (logits, new['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state['params'])
  grads = collectives.ordered_mean(grads, axis_name)
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  new_state = dict(state, step=state['step'] + 1, params=params, batch_stats=batch_stats,
                   opt_state=opt_state)
  step_metrics = {'loss': loss,
                  'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}
  step_metrics = collectives.ordered_mean(step_metrics, axis_name)
  step_metrics['learning_rate'] = schedule(state['step'])
  step_metrics['param_norm'] = jnp.sqrt(sum(jnp.sum(jnp.square(p))
                                            for p in jax.tree_util.tree_leaves(params)))
  return new_state, step_metrics


def eval_step(state, batch, *, net, inverse_net=None, axis_name=AXIS):
  """Sums over this device's masked eval shard, summed over `axis_name`.

  batch: {'image' (B, H, W, C), 'label' (B,), 'mask' (B,)}. `net` gives loss and
  accuracy; `inverse_net` (float32, precision 'highest'; None for a
  non-invertible model) gives the inversion error of invert(forward(x)): the
  same net as `net` when the model already runs that way.
  Returns {'count', 'loss', 'correct', 'inversion_error_sq', 'image_sq'} sums.
  """
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  x, mask = batch['image'], batch['mask']
  logits, z = net.forward(variables, x)
  sums = {'count': jnp.sum(mask),
          'loss': jnp.sum(cross_entropy(logits, batch['label']) * mask),
          'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask)}
  if inverse_net is not None:
    if inverse_net is not net:
      _, z = inverse_net.forward(variables, x)
    x_again = inverse_net.invert(variables, z)
    per_image = lambda a: jnp.sum(jnp.square(a.astype(jnp.float32)), axis=(1, 2, 3))
    sums['inversion_error_sq'] = jnp.sum(per_image(x_again - x) * mask)
    sums['image_sq'] = jnp.sum(per_image(x) * mask)
  return collectives.ordered_sum(sums, axis_name)


# ----------------------------------------------------------------------------- loop


def evaluate(p_eval, state, source, local_batch, num_devices) -> Dict[str, float]:
  """Loss, accuracy and relative inversion error over the whole eval split."""
  outputs = [p_eval(state, shard(batch, num_devices))
             for batch in source.eval_batches(local_batch, jax.process_index(),
                                              jax.process_count())]
  totals = {}
  for out in outputs:
    for key, value in unreplicate(out).items():
      totals[key] = totals.get(key, 0.0) + float(value)
  count = max(totals.get('count', 0.0), 1.0)
  result = {'eval/loss': totals['loss'] / count, 'eval/accuracy': totals['correct'] / count,
            'eval/num_examples': totals['count']}
  if 'inversion_error_sq' in totals:
    result['eval/inversion_rel_error'] = math.sqrt(
        totals['inversion_error_sq'] / max(totals['image_sq'], 1e-30))
  return result


class _PreemptionWatch:
  """Turns SIGTERM into a flag read between steps (single process); with several
  processes, JAX's preemption sync point makes all of them stop at the same step."""

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # no preemption service (jax.distributed not initialised)
        return False
    return self._flag.is_set()

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


class Program(NamedTuple):
  """Everything a config compiles to: nets, optimizer, schedule and the pmapped steps."""
  train_net: Any
  tx: Any
  schedule: Any
  total_steps: int
  steps_per_epoch: float
  p_train: Any
  p_eval: Any


_PROGRAMS = collections.OrderedDict()   # a few recent Programs, reused by identical runs


def build_program(config, num_train_examples: int, devices) -> Program:
  """The `Program` of `config` on `devices`. Cached per process: running the same
  config again (a resumed run, a sweep in a notebook) reuses the compiled steps."""
  key = (config.to_json(sort_keys=True), num_train_examples, tuple(devices),
         jax.process_count())
  if key in _PROGRAMS:
    _PROGRAMS.move_to_end(key)
    return _PROGRAMS[key]
  train_model, eval_model = model_configs(config)
  train_net = irevnet_jax.build(train_model, bn_axis_name=AXIS)
  loss_net = irevnet_jax.build(train_model)
  inverse_net = None
  if loss_net.invertible:
    same = eval_model.to_dict() == train_model.to_dict()
    inverse_net = loss_net if same else irevnet_jax.build(eval_model)
  total_steps, steps_per_epoch = training_steps(config, num_train_examples)
  schedule = learning_rate_schedule(config, total_steps, steps_per_epoch)
  tx = make_optimizer(config, schedule)
  pmap_devices = list(devices) if jax.process_count() == 1 else None  # None: all processes
  donate = (0,) if jax.default_backend() != 'cpu' else ()
  p_train = jax.pmap(functools.partial(train_step, net=train_net, tx=tx, schedule=schedule),
                     axis_name=AXIS, devices=pmap_devices, donate_argnums=donate)
  p_eval = jax.pmap(functools.partial(eval_step, net=loss_net, inverse_net=inverse_net),
                    axis_name=AXIS, devices=pmap_devices)
  program = Program(train_net, tx, schedule, total_steps, steps_per_epoch, p_train, p_eval)
  _PROGRAMS[key] = program
  while len(_PROGRAMS) > 2:
    _PROGRAMS.popitem(last=False)
  return program


def _due(step, every, total):
  return step == total or (every > 0 and step % every == 0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Result:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Raises `Preempted` after saving on SIGTERM, and FloatingPointError (naming the
  step) on a non-finite training loss, without saving the bad state.
  """
  check_config(config)
  process_index, process_count = jax.process_index(), jax.process_count()
  is_chief = process_index == 0

  # Devices and batch sizes.
  devices = select_devices(int(config.num_devices))
  num_local = len(devices)
  num_global = num_local * process_count
  what = f'devices ({process_count} process(es) x {num_local} local devices)'
  _divisible('batch_size', config.batch_size, num_global, what)
  _divisible('eval_batch_size', config.eval_batch_size, num_global, what)
  local_batch = config.batch_size // process_count
  local_eval_batch = config.eval_batch_size // process_count

  # Input.
  input_shape = tuple(irevnet_jax.build(config.model).input_shape)   # validates the model
  source = input_pipeline.get_source(config.dataset, input_shape)
  if tuple(source.input_shape) != input_shape:
    raise ValueError(f'dataset.name={config.dataset.name!r} yields images of shape '
                     f'{tuple(source.input_shape)}, but model.input_shape={input_shape}.')
  if source.num_classes > config.model.num_classes:
    raise ValueError(f'dataset.name={config.dataset.name!r} has {source.num_classes} classes; '
                     f'set model.num_classes={source.num_classes}.')

  # Optimizer, schedule and the compiled steps.
  program = build_program(config, source.num_train_examples, devices)
  train_net, tx = program.train_net, program.tx
  total_steps, steps_per_epoch = program.total_steps, program.steps_per_epoch

  # State: restore the latest usable checkpoint, or start fresh.
  checkpointer = checkpoints.Checkpointer(workdir, keep=int(config.keep_checkpoints),
                                          use_async=bool(config.async_checkpoints))
  restored, restored_step = checkpointer.restore(
      target=create_state(train_net, tx, int(config.seed), abstract=True))
  if restored is not None:
    state, start_step = restored, int(restored_step)
    logging.info('Resuming from the checkpoint at step %d in %s.', start_step, workdir)
  else:
    state, start_step = create_state(train_net, tx, int(config.seed)), 0
  if is_chief:
    checkpoints.write_config(workdir, config)
    logging.info('%s\n%d parameters; %d steps of global batch %d on %d device(s), '
                 '%.1f steps per epoch.', train_net, irevnet_jax.count_params(train_net),
                 total_steps, config.batch_size, num_global, steps_per_epoch)
  writer = metrics.MetricWriter(workdir, enabled=is_chief, resume_step=start_step)
  progress = metrics.Progress(start_step, total_steps, enabled=is_chief)

  p_train, p_eval = program.p_train, program.p_eval
  state = replicate(state, devices)
  batches = source.train_batches(local_batch, process_index, process_count,
                                 int(config.seed), start_step)

  pending = []          # (step, per-step metrics on device), fetched at log time
  last_saved = start_step if restored is not None else None
  eval_metrics = {}
  watch = _PreemptionWatch()

  def flush():
    """Fetches pending train metrics; stops at the first step with a non-finite loss or
    non-finite parameters, naming it (its state is never saved)."""
    fetched = [(s, unreplicate(m)) for s, m in pending]
    pending.clear()
    for s, m in fetched:
      for key, what in (('loss', 'training loss'), ('param_norm', 'parameters')):
        if not np.isfinite(m[key]):
          raise FloatingPointError(
              f'Non-finite {what} ({key}={float(m[key])}) at step {s}; stopping. The last '
              f'good checkpoint is step {last_saved} in {checkpointer.directory}. Try a '
              f'lower learning_rate.')
    return fetched

  def save(step):
    nonlocal last_saved
    checkpointer.save(step, unreplicate(state))
    last_saved = step

  try:
    step = start_step
    if step >= total_steps:
      logging.info('The run in %s is already at step %d of %d.', workdir, step, total_steps)
      eval_metrics = evaluate(p_eval, state, source, local_eval_batch, num_local)
    while step < total_steps:
      state, step_metrics = p_train(state, shard(next(batches), num_local))
      step += 1
      pending.append((step, step_metrics))

      if _due(step, config.log_every_steps, total_steps):
        fetched = flush()
        rate = progress.steps_per_second(step)
        summary = {f'train/{k}': float(np.mean([m[k] for _, m in fetched]))
                   for k in ('loss', 'accuracy')}
        summary['train/learning_rate'] = float(fetched[-1][1]['learning_rate'])
        summary['steps_per_second'] = rate
        writer.write(step, summary)
        progress.report(step, summary['train/loss'], rate)

      if _due(step, config.eval_every_steps, total_steps):
        flush()
        eval_metrics = evaluate(p_eval, state, source, local_eval_batch, num_local)
        writer.write(step, eval_metrics)
        if is_chief:
          logging.info('eval at step %d: %s', step,
                       ', '.join(f'{k} {v:.6g}' for k, v in eval_metrics.items()))
        progress.steps_per_second(step)  # do not count evaluation time as training

      preempted = watch.reached(step)
      if _due(step, config.checkpoint_every_steps, total_steps) or preempted:
        flush()
        save(step)
      if preempted:
        checkpointer.wait()
        raise Preempted(step)
  finally:
    watch.close()
    checkpointer.close()
    writer.close()
  return Result(unreplicate(state), eval_metrics, step)
