"""The experiment config: its fields and defaults, and their checks.

An experiment config is an `ml_collections.ConfigDict`: `base_config(model)` sets
every field (experiments/configs/*.py start from it and override a few), and
`check_config` rejects unknown or missing fields and values that cannot work,
naming the field and a fix. What the fields mean elsewhere has one home each: the
training numerics and the exact rule in `model/precision.py` (whatever trained, the
inversion error of evaluation, `experiments.analyze` and `invert` run the model in
float32 at precision 'highest'), the training length in `train/optimizer.py`, the batch
sizes against the devices in `train/parallel.py`.
"""
import math

import ml_collections
from ml_collections.config_dict import placeholder

from irevnet_jax.errors import UserError
from irevnet_jax.model import precision, validation

TRAIN_DTYPES = precision.TRAIN_DTYPES
LR_SCHEDULES = ('step', 'cosine')


def base_config(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An experiment config around `model` (from `irevnet_jax.presets` or `.baselines`)."""
  c = ml_collections.ConfigDict()
  c.model = model

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'digits'        # 'digits' | 'synthetic' | TFDS names (imagenet2012, cifar10, ...)

  c.batch_size = 128               # global, over all devices and processes
  c.eval_batch_size = 256          # global; the last eval batch is padded and masked
  c.num_train_steps = -1           # > 0 wins over num_epochs
  c.num_epochs = 10.0

  c.learning_rate = 0.1            # peak rate (after warm-up)
  c.lr_schedule = 'step'           # 'step' | 'cosine'
  c.lr_boundaries = ()             # in epochs, for 'step'
  c.lr_decay_factor = 0.1          # multiplies the rate at each boundary
  c.warmup_epochs = 0.0            # linear warm-up from ~0 to learning_rate
  c.momentum = 0.9
  c.nesterov = False
  c.restart_momentum_each_epoch = False  # True: the momentum starts afresh at each
                                   # epoch's first step, as in the authors' CIFAR script (a
                                   # new SGD every epoch); docs/training.md
  c.weight_decay = 1e-4            # L2 on all parameters, as in the paper

  c.train_dtype = 'auto'           # compute dtype of training: 'auto' = bfloat16 on GPU/TPU,
                                   # float32 on CPU; parameters and coupling streams stay float32
  c.train_precision = 'default'    # F's convolution precision in training; evaluation's
                                   # inversion, analysis and invert always use 'highest'

  c.log_every_steps = 50
  c.eval_every_steps = 500         # <= 0: evaluate only at the end
  c.eval_inversion_examples = -1   # eval examples whose inversion error is measured
                                   # (a fixed seeded subset); -1 = all
  c.checkpoint_every_steps = 500   # <= 0: checkpoint only at the end (and on SIGTERM)
  c.keep_checkpoints = 3
  c.async_checkpoints = True       # write checkpoints in the background (Orbax async)
  c.seed = 0
  c.num_devices = 0                # local devices to use; 0 = all (single-process runs only)
  c.parallel = 'pmap'              # 'pmap' | 'shard_map' (jax.jit + shard_map): same results
  c.ordered_reductions = True      # cross-device means (gradients, metrics, BN statistics) in
                                   # a fixed device order: results do not depend on the process
                                   # layout, at about a native all-reduce's bytes (step of
                                   # bijective_released: 1.006x at 8 devices, 1.06x at 64);
                                   # False: the native all-reduce, for pods beyond ~64 devices
                                   # (docs/training.md)
  # The memory a train step may use, in GiB: of each GPU/TPU, or on CPU of the host (shared
  # by its devices). None: 90% of what the device reports (bytes_limit) or of the host's
  # available memory. The compiled step's needs are checked against it before training.
  c.device_memory_gib = placeholder(float)
  return c


CONFIG_FIELDS = frozenset(base_config(ml_collections.ConfigDict()).keys())
# Fields that the config.json of runs written before they existed lacks, with the value that
# those runs trained with (`with_added_fields`).
ADDED_FIELDS = {'restart_momentum_each_epoch': False, 'device_memory_gib': None}


def with_added_fields(config) -> ml_collections.ConfigDict:
  """A copy of a run's `config` with the ADDED_FIELDS it lacks (an older run's config.json)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for field, value in ADDED_FIELDS.items():
    if field not in config:
      config[field] = value
  return config


def _fail(message):
  raise UserError(message)


def _finite_number(config, field, low=None, low_inclusive=True, example=''):
  value = config[field]
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    _fail(f'{field}={value!r} must be a finite number{example}.')
  if low is not None and (value < low or (value == low and not low_inclusive)):
    bound = f'>= {low}' if low_inclusive else f'> {low}'
    _fail(f'{field}={value} must be {bound}{example}.')
  return value


def check_config(config):
  """Rejects unknown or missing fields and values that cannot work, naming the field."""
  keys = set(config.keys())
  unknown, missing = sorted(keys - CONFIG_FIELDS), sorted(CONFIG_FIELDS - keys)
  if unknown:
    _fail(f'Unknown config field(s) {unknown}; known fields are {sorted(CONFIG_FIELDS)}.')
  if missing:
    _fail(f'Config is missing field(s) {missing}; start from '
          f'irevnet_jax.train.config.base_config(model), which sets them all.')
  if 'name' not in config.dataset:
    _fail("Config field dataset.name is missing, e.g. dataset.name='digits'.")
  if config.lr_schedule not in LR_SCHEDULES:
    _fail(f'lr_schedule={config.lr_schedule!r} is not one of {LR_SCHEDULES}.')
  for field, example in (('batch_size', 64), ('eval_batch_size', 256), ('keep_checkpoints', 3)):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      _fail(f'{field}={value!r} must be a positive integer, e.g. {example}.')
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    _fail(f'Set num_train_steps > 0 or num_epochs > 0 (got num_train_steps='
          f'{config.num_train_steps}, num_epochs={config.num_epochs}).')
  _finite_number(config, 'learning_rate', 0, low_inclusive=False, example=', e.g. 0.1')
  _finite_number(config, 'momentum', 0, example=' in [0, 1), e.g. 0.9')
  if config.momentum >= 1:
    _fail(f'momentum={config.momentum} must be in [0, 1), e.g. 0.9.')
  _finite_number(config, 'weight_decay', 0, example=', e.g. 1e-4')
  if not isinstance(config.restart_momentum_each_epoch, bool):
    _fail(f'restart_momentum_each_epoch={config.restart_momentum_each_epoch!r} must be True '
          f'or False.')
  _finite_number(config, 'warmup_epochs', 0, example=', e.g. 1.0')
  _finite_number(config, 'lr_decay_factor', 0, low_inclusive=False, example=', e.g. 0.1')
  if not isinstance(config.seed, int) or not 0 <= config.seed < 2**31:
    _fail(f'seed={config.seed!r} must be an integer in [0, 2**31), e.g. 0.')
  if config.train_dtype not in TRAIN_DTYPES:
    hint = (' float16 needs loss scaling, which this runner does not do: use bfloat16 '
            '(same speed on GPUs/TPUs, float32 range).' if config.train_dtype == 'float16' else '')
    _fail(f'train_dtype={config.train_dtype!r} is not one of {TRAIN_DTYPES}.{hint}')
  if config.train_precision not in validation.PRECISIONS:
    _fail(f'train_precision={config.train_precision!r} is not one of '
          f'{validation.PRECISIONS}.')
  if config.model.get('dtype', 'float32') != 'float32':
    _fail(f'model.dtype={config.model.dtype!r}: the runner keeps the model in float32 and '
          f'trains in train_dtype; set --config.train_dtype=bfloat16 (or float32) instead.')
  if config.parallel not in ('pmap', 'shard_map'):
    _fail(f"parallel={config.parallel!r} is not 'pmap' or 'shard_map'.")
  memory = config.get('device_memory_gib')
  if memory is not None and (isinstance(memory, bool) or not isinstance(memory, (int, float))
                             or not 0 < memory < math.inf):
    _fail(f'device_memory_gib={memory!r} must be a positive number of GiB, e.g. 16, or None '
          f'(what the device or host reports).')
  if not isinstance(config.eval_inversion_examples, int) or config.eval_inversion_examples < -1:
    _fail(f'eval_inversion_examples={config.eval_inversion_examples!r} must be -1 (all), 0 '
          f'(none) or a positive count, e.g. 1024.')
