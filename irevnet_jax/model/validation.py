"""The checks that every model config goes through, i-RevNet's and the baselines'.

Each check raises a `UserError` that names the field (`model.<field>`) and,
where there is one, a value that works. `presets.layout` and
`baselines.layout` add the checks that only their architecture needs.
"""
from typing import Optional, Sequence, Tuple

from irevnet_jax.errors import UserError

PRECISIONS = ('default', 'high', 'highest')
DTYPES = ('float32', 'bfloat16', 'float16', 'float64')
# How a stage's scan over alike blocks is compiled (`reversible.scan_unroll`); also
# 'unroll:<k>', k >= 2: k blocks per loop iteration.
BLOCK_SCANS = ('auto', 'unrolled', 'rolled')
# Dtype of the coupling streams (`blocks.stream_dtype`).
STREAM_DTYPES = ('float32', 'bfloat16')
# What computes F's stride-1 BN-ReLU-convolution pairs (`model/pallas_conv.py`).
FUSED_KERNELS = ('none', 'pallas')
# Fields that configs written before they existed lack, with the value they then had.
OPTIONAL_FIELDS = {'block_scan': 'auto', 'stream_dtype': 'float32', 'fused_bn_relu': True,
                   'fused_kernel': 'none'}


def int_tuple(config, field: str, length: Optional[int] = None) -> Tuple[int, ...]:
  """config[field] as a tuple of ints (a bare int counts as one entry)."""
  value = config[field]
  if isinstance(value, int):
    value = (value,)
  try:
    value = tuple(int(v) for v in value)
  except (TypeError, ValueError):
    raise UserError(f'model.{field} must be a list of integers, got {value!r}.') from None
  if length is not None and len(value) != length:
    raise UserError(f'model.{field} must have {length} entries, got {value!r}.')
  return value


def check_fields(config, known: Sequence[str], what: str, start_from: str):
  """Rejects unknown fields (typos in overrides) and missing ones (but OPTIONAL_FIELDS)."""
  unknown = sorted(set(config.keys()) - set(known))
  if unknown:
    raise UserError(f'Unknown model config field(s) {unknown} for {what}; '
                    f'known fields are {sorted(known)}.')
  missing = sorted(set(known) - set(config.keys()) - set(OPTIONAL_FIELDS))
  if missing:
    raise UserError(f'The model config for {what} lacks field(s) {missing}; '
                    f'start from {start_from}.')


def get(config, field: str):
  """config[field], or its OPTIONAL_FIELDS default when an older config lacks it."""
  return config.get(field, OPTIONAL_FIELDS.get(field))


def check_choice(config, field: str, choices: Sequence[str], hint: str = '') -> str:
  value = get(config, field)
  if value not in choices:
    raise UserError(f'model.{field}={value!r} is not one of {tuple(choices)}{hint}.')
  return value


def block_scan(config) -> str:
  """model.block_scan: one of BLOCK_SCANS, or 'unroll:<k>' with an integer k >= 2."""
  value = get(config, 'block_scan')
  if value in BLOCK_SCANS:
    return value
  k = value.split(':', 1)[1] if isinstance(value, str) and value.startswith('unroll:') else ''
  if not (k.isdigit() and int(k) >= 2):
    raise UserError(f"model.block_scan={value!r} is not one of {BLOCK_SCANS} or 'unroll:<k>' "
                    "(k >= 2 blocks per loop iteration, e.g. 'unroll:4').")
  return value


def check_bool(config, field: str) -> bool:
  value = get(config, field)
  if not isinstance(value, bool):
    raise UserError(f'model.{field}={value!r} must be True or False.')
  return value


def input_shape(config) -> Tuple[int, int, int]:
  """model.input_shape as positive (H, W, C)."""
  h, w, c = int_tuple(config, 'input_shape', 3)
  if min(h, w, c) < 1:
    raise UserError(f'model.input_shape={(h, w, c)} must be positive (H, W, C).')
  return h, w, c


def check_stages(count_field: str, counts, strides, widths):
  """One entry per stage in each list, at least one block per stage, strides 1 or 2."""
  noun = count_field[:-1]
  if not counts:
    raise UserError(f'model.{count_field} is empty; give at least one stage, '
                    f'e.g. {count_field}=(2,).')
  if not len(counts) == len(strides) == len(widths):
    raise UserError(
        f'model.{count_field}, model.strides and model.widths need one entry per stage, got '
        f'{count_field}={counts}, strides={strides}, widths={widths}.')
  if min(counts) < 1:
    raise UserError(f'model.{count_field}={counts}: every stage needs at least 1 {noun}.')
  if any(s not in (1, 2) for s in strides):
    raise UserError(f'model.strides={strides}: each stride must be 1 or 2 '
                    f'(a stride-2 stage halves height and width).')


def check_divisible(shape, downsampling: int, cause: str, hint: str = ''):
  """Height and width of `shape` must be multiples of the network's total downsampling."""
  h, w, c = shape
  if h % downsampling or w % downsampling:
    fit_h = max(downsampling, h - h % downsampling)
    fit_w = max(downsampling, w - w % downsampling)
    raise UserError(
        f'model.input_shape={(h, w, c)}: height and width must be divisible by the total '
        f'downsampling {downsampling} ({cause}); use e.g. input_shape=({fit_h}, {fit_w}, {c})'
        f'{hint}, or fewer stride-2 stages.')


def check_array_shape(array, expected, name: str, input_shape_):
  """Raises unless `array` is (N, *expected); the message points at model.input_shape."""
  if array.ndim != 4 or tuple(array.shape[1:]) != tuple(expected):
    raise UserError(
        f'{name} must have shape (N, {", ".join(map(str, expected))}) for this model '
        f'(model.input_shape={tuple(input_shape_)}), got {tuple(array.shape)}. '
        f'Resize the input or set model.input_shape to match it.')
