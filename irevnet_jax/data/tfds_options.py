"""What a TFDS `dataset` config asks for: the datasets known, their fields, defaults and checks.

`parse_options(dataset_config, model_input_shape, model_num_classes)` turns the `dataset`
sub-config into checked `Options`, the model's shape and classes checked against the
dataset (a UserError names every field that does not fit and a value that works); `SPECS`
holds what the pipeline knows of each dataset (classes, image size, normalisation
constants, default recipe).
`flag('name=synthetic')` names a dataset field as the running command's flag.
No TensorFlow here: `irevnet_jax.data.input_pipeline` reads the names without importing it.
"""
import contextlib
import contextvars
import dataclasses
import os
from typing import Optional, Tuple

from irevnet_jax.errors import UserError

IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
CROP_SAMPLERS = ('inception', 'torchvision')   # keys of tfds_augment.CROP_SAMPLERS
JITTER_FIELDS = ('jitter_brightness', 'jitter_contrast', 'jitter_saturation', 'jitter_hue')
# How the running command spells a dataset field's flag: experiments.main's
# --config.dataset.<field>, or --dataset.<field> (evaluate, analyze: `flag_prefix`).
_FLAG_PREFIX = contextvars.ContextVar('dataset_flag_prefix', default='--config.dataset.')


def flag(assignment: str) -> str:
  """'name=synthetic' -> '--config.dataset.name=synthetic', or with the prefix that
  `flag_prefix` set: what an error message tells the user to pass."""
  return _FLAG_PREFIX.get() + assignment


@contextlib.contextmanager
def flag_prefix(prefix: str):
  """Inside, `flag` names dataset fields with `prefix` (e.g. '--dataset.')."""
  token = _FLAG_PREFIX.set(prefix)
  try:
    yield
  finally:
    _FLAG_PREFIX.reset(token)


@dataclasses.dataclass(frozen=True)
class Spec:
  """What the pipeline needs to know about one TFDS dataset."""
  kind: str                                   # 'imagenet' | 'cifar'
  num_classes: int
  image_shape: Optional[Tuple[int, int, int]]  # None: variable size (resized by the pipeline)
  eval_split: str
  mean: Tuple[float, float, float]            # per channel, in [0, 1] units
  std: Tuple[float, float, float]
  normalization: str
  jitter: Tuple[float, float, float, float]   # default strengths, JITTER_FIELDS order


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The paper's colour distortion (the RevNet code's): see docs/data_and_launch.md.
PAPER_JITTER = (0.25, 0.5, 0.5, 0.2)
SPECS = {
    'imagenet2012': Spec('imagenet', 1000, None, 'validation', _IMAGENET_MEAN, _IMAGENET_STD,
                          'unit', PAPER_JITTER),
    # The released i-RevNet CIFAR code's normalisation constants.
    'cifar10': Spec('cifar', 10, (32, 32, 3), 'test', (0.4914, 0.4822, 0.4465),
                     (0.2023, 0.1994, 0.2010), 'mean_std', (0.0, 0.0, 0.0, 0.0)),
    'cifar100': Spec('cifar', 100, (32, 32, 3), 'test', (0.5071, 0.4865, 0.4409),
                      (0.2673, 0.2564, 0.2762), 'mean_std', (0.0, 0.0, 0.0, 0.0)),
}


ALIASES = {'imagenet': 'imagenet2012'}
FIELDS = {   # field -> type (what `experiments.evaluate --dataset.<field>` parses)
    'name': str, 'data_dir': str, 'manual_dir': str, 'normalization': str, 'download': bool,
    'train_split': str, 'eval_split': str, 'crop_sampler': str, 'crop_area_range': tuple,
    'crop_aspect_range': tuple, **{field: float for field in JITTER_FIELDS},
    'eval_crop_fraction': float, 'cpu_threads': int}


@dataclasses.dataclass(frozen=True)
class Options:
  """The `dataset` config fields, with defaults filled in and checked."""
  name: str
  data_dir: Optional[str]
  manual_dir: Optional[str]
  normalization: str
  download: bool
  train_split: str
  eval_split: str
  crop_sampler: str
  crop_area_range: Tuple[float, float]
  crop_aspect_range: Tuple[float, float]
  jitter: Tuple[float, float, float, float]   # brightness, contrast, saturation, hue
  eval_crop_fraction: float
  cpu_threads: int
  input_shape: Optional[Tuple[int, int, int]]   # the model's (H, W, C), checked; None: unset
  pixel_mean: Tuple[float, float, float]   # uint8 units: the model's input is
  pixel_std: Tuple[float, float, float]    # (image - pixel_mean) / pixel_std


def _get(dataset_config, field, default):
  """The field's value, or `default` if it is missing or None (a placeholder)."""
  value = dataset_config.get(field, None)
  return default if value is None else value


def parse_options(dataset_config, model_input_shape=None, model_num_classes=None) -> Options:
  """Reads the `dataset` config (ConfigDict or dict) into `Options`; UserError on bad fields.

  With `model_input_shape` (H, W, C) and `model_num_classes`, every model field that does
  not fit the dataset is named in one UserError (before anything of TensorFlow loads)."""
  name = ALIASES.get(dataset_config.get('name', None), dataset_config.get('name', None))
  if name not in SPECS:
    raise UserError(f'dataset.name={name!r} is not a TFDS dataset this pipeline knows; '
                    f'use one of {sorted(SPECS)} (or "digits" / "synthetic").')
  unknown = sorted(set(dataset_config.keys()) - set(FIELDS))
  if unknown:
    raise UserError(f'dataset.name={name!r} has no field(s) {unknown}; its fields are '
                    f'{list(FIELDS)}.')
  spec = SPECS[name]
  if model_input_shape is not None:
    model_input_shape = tuple(int(d) for d in model_input_shape)
    _check_model_fits(name, spec, model_input_shape, model_num_classes)
  get = lambda field, default: _get(dataset_config, field, default)  # noqa: E731
  normalization = get('normalization', spec.normalization)
  pixel_mean, pixel_std = pixel_stats(spec, normalization)
  opts = Options(
      name=name,
      data_dir=_path_or_none(get('data_dir', None)),
      manual_dir=_path_or_none(get('manual_dir', None)),
      normalization=normalization,
      download=bool(get('download', True)),
      train_split=str(get('train_split', 'train')),
      eval_split=str(get('eval_split', spec.eval_split)),
      crop_sampler=str(get('crop_sampler', 'inception')),
      crop_area_range=tuple(float(v) for v in get('crop_area_range', (0.05, 1.0))),
      crop_aspect_range=tuple(float(v) for v in get('crop_aspect_range', (3 / 4, 4 / 3))),
      jitter=tuple(float(get(f, d)) for f, d in zip(JITTER_FIELDS, spec.jitter)),
      eval_crop_fraction=float(get('eval_crop_fraction', 0.875)),
      cpu_threads=int(get('cpu_threads', 0)),
      input_shape=model_input_shape,
      pixel_mean=pixel_mean,
      pixel_std=pixel_std,
  )
  _check_options(opts)
  return opts


def _check_model_fits(name: str, spec: Spec, input_shape, num_classes) -> None:
  """A UserError naming every model field that does not fit the dataset (input_shape and
  num_classes together) and the values that do."""
  wrong, fits = [], []
  try:
    check_input_shape(name, spec, input_shape)
  except UserError:
    need = spec.image_shape or (224, 224, 3)
    why = ('its images are ' + str(spec.image_shape) if spec.image_shape
           else 'its RGB images are resized to (H, W, 3)')
    wrong.append(f'model.input_shape={input_shape} ({why})')
    fits.append(f'model.input_shape={need}')
  if num_classes is not None and int(num_classes) < spec.num_classes:
    wrong.append(f'model.num_classes={num_classes} (it has {spec.num_classes} classes)')
    fits.append(f'model.num_classes={spec.num_classes}')
  if wrong:
    raise UserError(f'dataset.name={name!r} does not fit the model: {" and ".join(wrong)}; '
                    f'set {" and ".join(fits)}, or start from a config made for it '
                    '(experiments/configs/).')


def _check_options(opts: Options) -> None:
  """A UserError naming the first bad field and a value that works."""
  if opts.normalization not in ('unit', 'mean_std'):
    raise UserError(f'dataset.normalization={opts.normalization!r}: use "unit" ([0, 1], '
                    'as in the paper) or "mean_std" (per-channel mean/std).')
  if opts.crop_sampler not in CROP_SAMPLERS:
    raise UserError(f'dataset.crop_sampler={opts.crop_sampler!r}: use "inception" (the '
                    'paper\'s) or "torchvision" (RandomResizedCrop, the released script\'s).')
  area, aspect = opts.crop_area_range, opts.crop_aspect_range
  if len(area) != 2 or not 0 < area[0] <= area[1] <= 1:
    raise UserError(f'dataset.crop_area_range={area} must be (lo, hi) with '
                    '0 < lo <= hi <= 1, e.g. (0.05, 1.0).')
  if len(aspect) != 2 or not 0 < aspect[0] <= aspect[1]:
    raise UserError(f'dataset.crop_aspect_range={aspect} must be (lo, hi) '
                    'with 0 < lo <= hi, e.g. (0.75, 1.333).')
  for field, value in zip(JITTER_FIELDS, opts.jitter):
    limit = 0.5 if field == 'jitter_hue' else float('inf')
    if not 0 <= value <= limit:
      raise UserError(f'dataset.{field}={value} must be in [0, {limit}] (0 turns it off), '
                      'e.g. 0.2.')
  if not 0 < opts.eval_crop_fraction <= 1:
    raise UserError(f'dataset.eval_crop_fraction={opts.eval_crop_fraction} must be in '
                    '(0, 1], e.g. 0.875.')
  if opts.cpu_threads < 0:
    raise UserError(f'dataset.cpu_threads={opts.cpu_threads} must be >= 0 (0: all cores), '
                    'e.g. 8.')


def _path_or_none(path):
  return None if path in (None, '') else os.path.expanduser(str(path))


def check_input_shape(name: str, spec: Spec, input_shape) -> Tuple[int, int, int]:
  """The model's (H, W, C) if this dataset can feed it, else a UserError naming the field."""
  shape = tuple(int(v) for v in input_shape)
  if spec.image_shape is not None:
    if shape != spec.image_shape:
      raise UserError(
          f'model.input_shape={shape} does not fit dataset.name={name!r}, whose images are '
          f'{spec.image_shape} and are not resized: set model.input_shape={spec.image_shape} '
          '(e.g. irevnet_jax.presets.cifar10()).')
    return shape
  if len(shape) != 3 or shape[2] != 3 or min(shape[:2]) < 8:
    raise UserError(
        f'model.input_shape={shape} does not fit dataset.name={name!r}: its RGB images are '
        'cropped and resized to (H, W, 3) with H, W >= 8, e.g. model.input_shape=(224, 224, 3).')
  return shape


def pixel_stats(spec: Spec, normalization: str):
  """(mean, std), per channel in uint8 pixel units, that the model input is normalised by."""
  if normalization == 'mean_std':
    return tuple(255.0 * m for m in spec.mean), tuple(255.0 * s for s in spec.std)
  return (0.0,) * 3, (255.0,) * 3
