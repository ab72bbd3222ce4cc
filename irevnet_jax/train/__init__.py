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
  evaluate   evaluation over a split (inversion on a fixed subset)
  loop       train_and_evaluate: the loop with logs, evaluations, checkpoints
"""
from irevnet_jax.train.config import base_config, check_config
from irevnet_jax.train.loop import Preempted, Result, train_and_evaluate

__all__ = ['base_config', 'check_config', 'train_and_evaluate', 'Preempted', 'Result']
