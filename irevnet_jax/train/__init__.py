"""Training and evaluation of the models in this package.

    from irevnet_jax import train
    result = train.train_and_evaluate(config, workdir)   # config: experiments/configs/*.py

Modules, each with one job:
  config     experiment config fields, defaults, checks, the precision policy
  optimizer  learning-rate schedule and SGD (optax)
  state      the train state: creation, finiteness
  steps      what one device computes per train / eval / inversion step
  parallel   pmap and jit + shard_map back ends: state, batches, compiled steps
  program    what a config compiles to (nets, optimizer, compiled steps)
  memory_fit whether the compiled train step fits in memory; model.backprop='auto'
  evaluate   evaluation over a split (inversion on a fixed subset)
  preemption SIGTERM / Ctrl-C / preemption notices as a flag read between steps; Preempted
  peers      several processes: a refusal on every process alike; one that stops stops the others
  resume     what a resume reads back so it records what an uninterrupted run would
  loop       train_and_evaluate: the loop with logs, evaluations, checkpoints
  evaluate_run  evaluating a run directory's checkpoint without training
"""
from irevnet_jax.train.config import base_config, check_config
from irevnet_jax.train.loop import Result, train_and_evaluate
from irevnet_jax.train.preemption import Preempted

__all__ = ['base_config', 'check_config', 'train_and_evaluate', 'Preempted', 'Result']
