"""What an experiment config compiles to: nets, optimizer, schedule and the parallel steps."""
import collections
import functools
from typing import Any, NamedTuple, Optional, Tuple

import jax

from irevnet_jax import nets
from irevnet_jax.data import input_pipeline
from irevnet_jax.model import precision
from irevnet_jax.train import config as config_lib
from irevnet_jax.train import optimizer, parallel, steps


class Program(NamedTuple):
  """The compiled pieces of one run. `exact_net` / `inversion_step` are None for models
  that are not invertible."""
  train_net: Any                 # train_dtype, train_precision, synchronised BN
  exact_net: Optional[Any]       # float32 (float64), precision 'highest'
  tx: Any
  schedule: Any
  total_steps: int
  steps_per_epoch: float
  input_shape: Tuple[int, int, int]
  backend: Any                   # parallel.PmapBackend or parallel.ShardMapBackend
  train_step: Any                # (state, batch) -> (state, metrics), on the devices
  eval_step: Any                 # (state, batch) -> sums
  inversion_step: Optional[Any]  # (state, batch) -> sums


def source_for(config):
  """The data source of `config.dataset`, checked against the model (input shape, classes):
  the one check of training, evaluation and analysis."""
  input_shape = tuple(nets.build(config.model).input_shape)   # validates the model
  return input_pipeline.get_source(config.dataset, input_shape, config.model.num_classes)


_CACHE = collections.OrderedDict()   # the last few Programs: a resumed run in the same
                                     # process (tests, notebooks) reuses the compiled steps


def build_program(config, num_train_examples: int, normalization: steps.Normalization,
                  devices) -> Program:
  """The `Program` of `config` on `devices`, cached per process for the same arguments.

  Args:
    config: a checked experiment config (`config.check_config`).
    num_train_examples: the training split's size (sets the schedule's epochs and steps).
    normalization: the source's pixel mean and std, applied to uint8 batches on the device.
    devices: this process's devices; with several processes, every process's take part.
  Returns:
    A `Program`: the training, evaluation and exact nets, optimizer, schedule, training
    length, back end and compiled steps (`exact_net` / `inversion_step` None for models
    that are not invertible).
  """
  key = (config.to_json(sort_keys=True), num_train_examples, tuple(normalization),
         tuple(devices), jax.process_count(), jax.default_backend())
  if key in _CACHE:
    _CACHE.move_to_end(key)
    return _CACHE[key]
  backend = parallel.make_backend(config.parallel, devices)
  train_net, tx, schedule, train_step = train_step_of(config, num_train_examples,
                                                      normalization, backend)
  train_model = config_lib.train_model_config(config)
  eval_net = nets.build(train_model)          # per-device BN statistics are unused
  exact_net = None
  if train_net.invertible:
    exact_net = nets.build(precision.exact_model_config(config.model))
  total_steps, steps_per_epoch = config_lib.training_steps(config, num_train_examples)
  common = {'normalize': normalization, 'ordered': bool(config.ordered_reductions)}
  eval_step = backend.compile(functools.partial(steps.eval_step, net=eval_net, **common))
  inversion_step = None
  if exact_net is not None:
    inversion_step = backend.compile(
        functools.partial(steps.inversion_step, exact_net=exact_net, **common))
  program = Program(train_net, exact_net, tx, schedule, total_steps, steps_per_epoch,
                    tuple(train_net.input_shape), backend, train_step, eval_step,
                    inversion_step)
  _CACHE[key] = program
  while len(_CACHE) > 2:
    _CACHE.popitem(last=False)
  return program


def train_step_of(config, num_train_examples: int, normalization: steps.Normalization,
                  backend):
  """(train net, optimizer, schedule, the train step on `backend`) of `config`; nothing
  compiled yet."""
  train_net = nets.build(config_lib.train_model_config(config), bn_axis_name=steps.AXIS)
  total_steps, steps_per_epoch = config_lib.training_steps(config, num_train_examples)
  schedule, tx = optimizer.schedule_and_optimizer(config, total_steps, steps_per_epoch)
  train_step = backend.compile(
      functools.partial(steps.train_step, net=train_net, tx=tx, schedule=schedule,
                        normalize=normalization, ordered=bool(config.ordered_reductions)),
      donate_state=True)
  return train_net, tx, schedule, train_step
