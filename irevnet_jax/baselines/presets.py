"""Model configs of the paper's baselines, and their validation.

A baseline model config is an `ml_collections.ConfigDict` with `arch` 'resnet'
or 'revnet'. `layout(config)` checks it and returns a frozen, hashable
`BaselineArch` that the Flax modules are built from. Fields:

  arch          'resnet' (ResNet v1.5) or 'revnet' (RevNet, Gomez et al. 2017)
  num_classes   classifier outputs
  input_shape   (H, W, C)
  stem          'imagenet': 7x7 conv stride 2 + 3x3 max-pool stride 2 (4x downsampling);
                'small': 3x3 conv stride 1, no pool (for CIFAR- or digits-size images)
  stem_width    channels of the stem convolution
  units         residual units per stage
  strides       stride of each stage's first unit (1 or 2)
  widths        bottleneck width per stage; a unit outputs 4 * width channels.
                ResNet: the 3x3 conv has `width` channels. RevNet: the authors'
                `filters`; each half has 2 * width channels and F, G have width // 2.
  dtype         compute dtype ('float32', 'bfloat16', 'float16', 'float64')
  precision     convolution precision: 'default', 'high' or 'highest'
  backprop      ResNet: 'autodiff' | 'remat'; RevNet: also 'reversible'
  block_scan    RevNet: how each stage's scan over its invertible units compiles
                ('auto' | 'unrolled' | 'rolled', as for i-RevNet); ResNet has no scans
"""
import dataclasses
from typing import Tuple

import ml_collections

from irevnet_jax.errors import UserError
from irevnet_jax.model import validation
from irevnet_jax.model.validation import DTYPES, PRECISIONS

ARCHS = ('resnet', 'revnet')
STEMS = ('imagenet', 'small')
BACKPROP_MODES = {'resnet': ('autodiff', 'remat'), 'revnet': ('autodiff', 'reversible', 'remat')}


def base(arch: str = 'resnet') -> ml_collections.ConfigDict:
  """Defaults shared by the baseline configs (ImageNet-size input)."""
  c = ml_collections.ConfigDict()
  c.arch = arch
  c.num_classes = 1000
  c.input_shape = (224, 224, 3)
  c.stem = 'imagenet'
  c.stem_width = 64
  c.units = (3, 4, 6, 3)
  c.strides = (1, 2, 2, 2)
  c.widths = (64, 128, 256, 512)
  c.dtype = 'float32'
  c.precision = 'default'
  c.backprop = 'autodiff'
  c.block_scan = 'auto'
  return c


def resnet50() -> ml_collections.ConfigDict:
  """ResNet-50 v1.5 (stride in the 3x3 conv): 25,557,032 parameters; 24.7% top-1 in the paper."""
  return base('resnet')


def revnet56() -> ml_collections.ConfigDict:
  """The RevNet authors' ImageNet RevNet-56 (their `revnet-54` config): 27,553,128 parameters.

  Units (2, 2, 3, 2), filters 128 (stem) and (128, 256, 512, 832) per stage.
  Backprop 'reversible' stores activations only at each stage's first,
  non-invertible unit; precision 'highest' keeps the reconstruction exact
  (TF32-like convolutions make rebuilt activations, and so gradients, drift).
  """
  c = base('revnet')
  c.stem_width = 128
  c.units = (2, 2, 3, 2)
  c.widths = (128, 256, 512, 832)
  c.precision = 'highest'
  c.backprop = 'reversible'
  return c


def revnet104() -> ml_collections.ConfigDict:
  """The RevNet authors' ImageNet RevNet-104: units (2, 2, 11, 2), 45,428,072 parameters."""
  c = revnet56()
  c.units = (2, 2, 11, 2)
  return c


PRESETS = {'resnet50': resnet50, 'revnet56': revnet56, 'revnet104': revnet104}


@dataclasses.dataclass(frozen=True)
class BaselineArch:
  """A validated, hashable baseline layout (see the module docstring for the fields)."""
  kind: str
  input_shape: Tuple[int, int, int]
  num_classes: int
  stem: str
  stem_width: int
  units: Tuple[int, ...]
  strides: Tuple[int, ...]
  widths: Tuple[int, ...]
  dtype: str
  precision: str
  backprop: str
  block_scan: str = 'auto'
  invertible = False
  dropout_rate = 0.0

  @property
  def stem_downsampling(self) -> int:
    return 4 if self.stem == 'imagenet' else 1

  @property
  def downsampling(self) -> int:
    return self.stem_downsampling * 2 ** sum(s == 2 for s in self.strides)

  @property
  def features_shape(self) -> Tuple[int, int, int]:
    """(H, W, C) of the features: the last stage's output, before the head."""
    h, w, _ = self.input_shape
    return (h // self.downsampling, w // self.downsampling, 4 * self.widths[-1])

  @property
  def z_shape(self) -> Tuple[int, int, int]:
    """What `Net.forward` returns beside the logits: here the features."""
    return self.features_shape

  @property
  def why_not_invertible(self) -> str:
    where = ('in every unit' if self.kind == 'resnet'
             else "in each stage's first unit (strided projections)")
    return (f'model.arch={self.kind!r} is not invertible: it discards information {where}; '
            f"use model.arch='irevnet' for a network with an inverse.")

  def describe(self) -> str:
    """A short summary of the layout, one line per stage."""
    name = 'ResNet v1.5' if self.kind == 'resnet' else 'RevNet'
    h, w, _ = self.input_shape
    s = self.stem_downsampling
    head = (f'{name}: input {self.input_shape}, stem {self.stem!r} -> {self.stem_width} '
            f'channels at {h // s}x{w // s}')
    stages = []
    for i, (n, stride, width) in enumerate(zip(self.units, self.strides, self.widths)):
      s *= stride
      stages.append(f'stage {i}: {n} units, stride {stride}, {4 * width} channels at '
                    f'{h // s}x{w // s}')
    fh, fw, fc = self.features_shape
    return '\n'.join([head, *stages, f'features: {fh}x{fw}x{fc} = {fh * fw * fc} values per image'])


def layout(config) -> BaselineArch:
  """Validates a baseline model config; a UserError names the field and a value that works."""
  kind = config.get('arch', 'irevnet')
  if kind not in ARCHS:
    raise UserError(f'model.arch={kind!r} is not a baseline; use one of {ARCHS} '
                    f"(or 'irevnet' through irevnet_jax.build).")
  validation.check_fields(config, base(kind).keys(), f'arch={kind!r}',
                          'irevnet_jax.baselines.resnet50() / revnet56()')
  h, w, c = validation.input_shape(config)
  units = validation.int_tuple(config, 'units')
  strides = validation.int_tuple(config, 'strides')
  widths = validation.int_tuple(config, 'widths')
  stem_width = int(config.stem_width)
  validation.check_stages('units', units, strides, widths)
  min_width = 2 if kind == 'revnet' else 1
  if min(widths) < min_width:
    raise UserError(f'model.widths={widths}: each width must be >= {min_width} '
                    f'(RevNet\'s F and G have width // 2 hidden channels).')
  if stem_width < 2:
    raise UserError(f'model.stem_width={stem_width} must be >= 2, e.g. 64.')
  validation.check_choice(config, 'stem', STEMS)
  if int(config.num_classes) < 1:
    raise UserError(f'model.num_classes={config.num_classes} must be >= 1.')
  validation.check_choice(config, 'dtype', DTYPES)
  validation.check_choice(config, 'precision', PRECISIONS)
  hint = (" (reversible backprop needs invertible units: use arch='revnet')"
          if kind == 'resnet' else '')
  validation.check_choice(config, 'backprop', BACKPROP_MODES[kind], f' for arch={kind!r}{hint}')
  block_scan = validation.block_scan(config)

  arch = BaselineArch(
      kind=kind, input_shape=(h, w, c), num_classes=int(config.num_classes), stem=config.stem,
      stem_width=stem_width, units=units, strides=strides, widths=widths, dtype=config.dtype,
      precision=config.precision, backprop=config.backprop, block_scan=block_scan)
  validation.check_divisible(
      (h, w, c), arch.downsampling, f'stem={config.stem!r}, strides={strides}',
      " or model.stem='small' (3x3 conv, no max-pool) for small images"
      if config.stem == 'imagenet' else '')
  return arch
