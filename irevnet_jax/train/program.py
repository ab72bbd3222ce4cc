"""What an experiment config compiles to: nets, data source, optimizer, schedule and steps.

    prog = build_program(config, backend)   # nothing compiled yet; prog.train_step compiles
                                            # on its first call (or memory_fit.fitting_program)

Read top-down: the model configs (training numerics, the exact twin), the nets, the data
source checked against them, the training length and optimizer, the state's shapes, the
steps on the back end. `model.backprop='auto'` builds autodiff steps:
`memory_fit.fitting_program` keeps them when they fit, or builds the memory-saving mode.
"""
import collections
import functools
from typing import Any, NamedTuple, Optional, Tuple

import jax

from irevnet_jax import nets
from irevnet_jax.data import input_pipeline
from irevnet_jax.model import precision
from irevnet_jax.train import optimizer, state as state_lib, steps

AUTO = 'auto'   # model.backprop: autodiff if its train step fits in memory, else memory-saving


class Program(NamedTuple):
  """The compiled pieces of one run. `exact_net` / `inversion_step` are None for models
  that are not invertible."""
  train_net: Any                 # train_dtype, train_precision, synchronised BN
  exact_net: Optional[Any]       # float32 (float64), precision 'highest'
  num_params: int
  source: Any                    # the `input_pipeline.DataSource`, checked against the model
  tx: Any
  schedule: Any
  total_steps: int
  steps_per_epoch: float
  state_shapes: Any              # the train state's `jax.ShapeDtypeStruct`s
  input_shape: Tuple[int, int, int]
  backend: Any                   # parallel.PmapBackend or parallel.ShardMapBackend
  train_step: Any                # (state, batch) -> (state, metrics), on the devices
  eval_step: Any                 # (state, batch) -> sums
  inversion_step: Optional[Any]  # (state, batch) -> sums


def source_for(config):
  """The data source of `config.dataset`, checked against the model (input shape, classes),
  without a program (analysis); `build_program` makes the same check."""
  input_shape = tuple(nets.build(config.model).input_shape)   # validates the model
  return input_pipeline.get_source(config.dataset, input_shape, config.model.num_classes)


def with_backprop(config, mode: str):
  """A copy of `config` with model.backprop=`mode`."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.backprop = mode
  return config


_CACHE = collections.OrderedDict()   # the last few Programs: a resumed run in the same
                                     # process (tests, notebooks) reuses the compiled steps


def build_program(config, backend) -> Program:
  """The `Program` of `config` on `backend`, cached per process for the same arguments.

  Args:
    config: a checked experiment config (`config.check_config`); model.backprop='auto'
      builds autodiff steps.
    backend: a `parallel` back end over this process's devices (with several processes,
      every process's take part).
  Returns:
    A `Program`: the training and exact nets, the data source (its training split's size
    sets the schedule's epochs, its pixel statistics the on-device normalisation),
    optimizer, schedule, training length, state shapes, back end and steps (`exact_net` /
    `inversion_step` None for models that are not invertible). Nothing is compiled yet.
  Raises:
    UserError naming the fix for a model or dataset that cannot work.
  """
  key = (config.to_json(sort_keys=True), backend.name, tuple(backend.local_devices),
         jax.process_count(), jax.default_backend())
  if key in _CACHE:
    _CACHE.move_to_end(key)
    return _CACHE[key]
  if config.model.backprop == AUTO:
    config = with_backprop(config, 'autodiff')
  train_model = precision.train_model_config(config.model, config.train_dtype,
                                             config.train_precision)
  exact_model = precision.exact_model_config(config.model)
  train_net = nets.build(train_model, bn_axis_name=steps.AXIS)
  eval_net = nets.build(train_model)          # per-device BN statistics are unused
  exact_net = nets.build(exact_model) if train_net.invertible else None
  num_params = nets.count_params(train_net)
  source = input_pipeline.get_source(config.dataset, tuple(train_net.input_shape),
                                     config.model.num_classes)
  total_steps, steps_per_epoch = optimizer.training_steps(config, source.num_train_examples)
  schedule, tx = optimizer.schedule_and_optimizer(config, total_steps, steps_per_epoch)
  state_shapes = state_lib.state_shapes(train_net, tx)
  common = {'normalize': steps.Normalization(tuple(source.pixel_mean), tuple(source.pixel_std)),
            'ordered': bool(config.ordered_reductions)}
  train_step = backend.compile(
      functools.partial(steps.train_step, net=train_net, tx=tx, schedule=schedule, **common),
      donate_state=True)
  eval_step = backend.compile(functools.partial(steps.eval_step, net=eval_net, **common))
  inversion_step = None
  if exact_net is not None:
    inversion_step = backend.compile(
        functools.partial(steps.inversion_step, exact_net=exact_net, **common))
  program = Program(train_net, exact_net, num_params, source, tx, schedule, total_steps,
                    steps_per_epoch, state_shapes, tuple(train_net.input_shape), backend,
                    train_step, eval_step, inversion_step)
  _CACHE[key] = program
  while len(_CACHE) > 2:
    _CACHE.popitem(last=False)
  return program
