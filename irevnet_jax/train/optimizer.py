"""The learning-rate schedule and the optimizer of an experiment config (optax)."""
import optax


def learning_rate_schedule(config, total_steps: int, steps_per_epoch: float):
  """step -> rate: linear warm-up over `warmup_epochs` (rate * (step + 1) / warm-up steps),
  then 'cosine' decay to 0 at the last step, or 'step' decay by `lr_decay_factor` at each
  of `lr_boundaries` (in epochs, counted from step 0)."""
  base = float(config.learning_rate)
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if config.lr_schedule == 'cosine':
    main = optax.cosine_decay_schedule(base, decay_steps=max(total_steps - warmup, 1))
  else:
    boundaries = {}
    for epoch in config.lr_boundaries:   # two boundaries on one step multiply
      step = int(round(epoch * steps_per_epoch)) - warmup
      boundaries[step] = boundaries.get(step, 1.0) * float(config.lr_decay_factor)
    main = optax.piecewise_constant_schedule(base, boundaries or None)
  if warmup <= 1:
    return main if warmup == 0 else optax.join_schedules(
        [optax.constant_schedule(base), main], [1])
  ramp = optax.linear_schedule(base / warmup, base, transition_steps=warmup - 1)
  return optax.join_schedules([ramp, main], [warmup])


def make_optimizer(config, schedule):
  """SGD with (Nesterov) momentum; L2 weight decay on all parameters, added to the
  gradient before the momentum as in the paper's PyTorch SGD."""
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))
