"""The training length, the learning-rate schedule and the optimizer of an experiment
config (optax)."""
import math
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


def training_steps(config, num_train_examples: int) -> Tuple[int, float]:
  """(total steps, steps per epoch) from num_train_steps or num_epochs."""
  steps_per_epoch = num_train_examples / config.batch_size
  if config.num_train_steps > 0:
    return int(config.num_train_steps), steps_per_epoch
  return int(math.ceil(config.num_epochs * steps_per_epoch)), steps_per_epoch


def epoch_start_step(epoch: float, steps_per_epoch: float) -> int:
  """The first step of `epoch` (epochs counted from 0 at step 0): round(epoch x steps per
  epoch), how the schedule's boundaries and the momentum restarts count epochs."""
  return int(round(epoch * steps_per_epoch))


def epoch_starts(total_steps: int, steps_per_epoch: float) -> Tuple[int, ...]:
  """The first steps of epochs 1, 2, ... that fall before `total_steps`."""
  starts, epoch = [], 1
  while (step := epoch_start_step(epoch, steps_per_epoch)) < total_steps:
    starts.append(step)
    epoch += 1
  return tuple(starts)


def learning_rate_schedule(config, total_steps: int, steps_per_epoch: float):
  """step -> rate: linear warm-up over `warmup_epochs` (rate * (step + 1) / warm-up steps),
  then 'cosine' decay to 0 at the last step, or 'step' decay by `lr_decay_factor` at each
  of `lr_boundaries` (in epochs, counted from step 0)."""
  base = float(config.learning_rate)
  warmup = epoch_start_step(config.warmup_epochs, steps_per_epoch)
  if config.lr_schedule == 'cosine':
    main = optax.cosine_decay_schedule(base, decay_steps=max(total_steps - warmup, 1))
  else:
    boundaries = {}
    for epoch in config.lr_boundaries:   # two boundaries on one step multiply
      step = epoch_start_step(epoch, steps_per_epoch) - warmup
      boundaries[step] = boundaries.get(step, 1.0) * float(config.lr_decay_factor)
    main = optax.piecewise_constant_schedule(base, boundaries or None)
  if warmup <= 1:
    return main if warmup == 0 else optax.join_schedules(
        [optax.constant_schedule(base), main], [1])
  ramp = optax.linear_schedule(base / warmup, base, transition_steps=warmup - 1)
  return optax.join_schedules([ramp, main], [warmup])


def schedule_and_optimizer(config, total_steps: int, steps_per_epoch: float):
  """(`learning_rate_schedule`, `make_optimizer`) of a run of `total_steps`; the momentum
  restarts at each epoch start with `config.restart_momentum_each_epoch`."""
  schedule = learning_rate_schedule(config, total_steps, steps_per_epoch)
  restarts = (epoch_starts(total_steps, steps_per_epoch)
              if config.restart_momentum_each_epoch else ())
  return schedule, make_optimizer(config, schedule, restarts)


def make_optimizer(config, schedule, restart_steps: Sequence[int] = ()):
  """SGD with (Nesterov) momentum; L2 weight decay on all parameters, added to the
  gradient before the momentum as in the paper's PyTorch SGD. At each of `restart_steps`
  (`epoch_starts` with `restart_momentum_each_epoch`) the momentum starts afresh."""
  tx = optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))
  return restart_momentum(tx, restart_steps) if config.momentum and restart_steps else tx


def restart_momentum(sgd, restart_steps: Sequence[int]):
  """`sgd` (a chain around one `optax.sgd` with a schedule) whose momentum trace is zero
  before the update of each of `restart_steps`: that update is a fresh SGD's first one,
  as when the authors' CIFAR script builds a new `torch.optim.SGD` every epoch.

  The step is the schedule's update count in `sgd`'s own state, so the state tree is
  `sgd`'s (checkpoints restore with or without restarts) and a resumed run restarts at
  the same steps. Cost: one compare per restart step and a select per parameter.
  """
  starts = np.asarray(sorted(set(int(s) for s in restart_steps)), np.int32)

  def update(updates, state, params=None):
    count = optax.tree_utils.tree_get(state, 'count')
    restart = jnp.any(count == starts)
    trace = optax.tree_utils.tree_get(state, 'trace')
    state = optax.tree_utils.tree_set(state, trace=jax.tree_util.tree_map(
        lambda t: jnp.where(restart, jnp.zeros_like(t), t), trace))
    return sgd.update(updates, state, params)

  return optax.GradientTransformation(sgd.init, update)
