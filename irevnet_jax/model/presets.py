"""Model configurations, and the validation that turns one into an invertible layout.

A model config is an `ml_collections.ConfigDict` (the `model` field of an
experiment config). `layout(config)` checks it and returns a frozen
`Architecture` (`model/layout.py`): the per-block channel plan that the network module is built
from. Every config that cannot be invertible is rejected here with a
`UserError` naming the field and a value that would work.
"""

import ml_collections

from irevnet_jax.errors import UserError
from irevnet_jax.model import validation
from irevnet_jax.model.layout import Architecture, BlockSpec, StageSpec

BACKPROP_MODES = ('autodiff', 'reversible', 'remat')


def base() -> ml_collections.ConfigDict:
  """Defaults shared by every i-RevNet model config; presets override a few fields."""
  c = ml_collections.ConfigDict()
  c.arch = 'irevnet'
  c.num_classes = 10
  c.input_shape = (32, 32, 3)     # (H, W, C)
  c.init_ds = 0                   # stem psi block size; 0 or 1 = no stem
  c.blocks = (18, 18, 18)         # blocks per stage
  c.strides = (1, 2, 2)           # stride of each stage's first block
  c.widths = (16, 64, 256)        # channels of each half of the pair, per stage
  c.kernel_sizes = (3, 3, 3)      # (k1, k2, k3) of the bottleneck F
  c.bottleneck_mult = 4           # F's hidden width = width // bottleneck_mult
  c.dropout_rate = 0.0
  c.dtype = 'float32'             # compute dtype of F and the head; coupling streams stay float32
  # 'bfloat16': the coupling streams too are bfloat16 where the model computes in bfloat16
  # (training with train_dtype bfloat16); half the stream bytes, at a cost in gradient and
  # reconstruction accuracy (benchmarks/RESULTS.md). A float32 model streams in float32.
  c.stream_dtype = 'float32'
  # Precision of F's convolutions, the same in forward and inverse. 'highest'
  # keeps float32 convolutions in true float32: on GPUs the default is
  # TF32-like, and a network run that way does not invert to float32 rounding
  # (`model/precision.py`). For fast training use dtype='bfloat16' instead.
  c.precision = 'highest'
  c.backprop = 'autodiff'         # 'autodiff' | 'reversible' | 'remat'; the runner also
                                  # takes 'auto' (train/memory_fit.py: autodiff if it fits)
  # How each stage's scan over its alike blocks compiles: 'auto' unrolls it on CPU
  # (XLA:CPU runs convolution gradients in a loop far slower) and keeps it rolled
  # on GPU/TPU (one compiled body: short compiles); 'unrolled' | 'rolled' force it;
  # 'unroll:<k>' runs k blocks per loop iteration.
  c.block_scan = 'auto'
  # BN-ReLU pairs in training as one op whose backward keeps only the BN input and
  # per-channel numbers (model/bn_relu.py); False: autodiff of BN then ReLU, the same
  # gradients to rounding (bfloat16 autodiff: 16.5 instead of 8 bytes per value of F's
  # input kept per block).
  c.fused_bn_relu = True
  # 'pallas': each stride-1 BN-ReLU-convolution pair of F as one Pallas kernel that never
  # writes the activation to memory (model/pallas_conv.py; Triton on GPU, Pallas's
  # interpreter on CPU: slow, for tests). Opt-in, untimed on a GPU so far; 'none': XLA.
  c.fused_kernel = 'none'
  return c


def digits() -> ml_collections.ConfigDict:
  """A small, exactly bijective i-RevNet for scikit-learn's 8x8 digits (57,930 parameters).

  8x8x1 -> psi(2) -> 4x4x4 -> stage 0 (2 blocks, stride 2) -> 2x2x16 -> stage 1
  (3 blocks) -> stage 2 (2 blocks, stride 2) -> z of 1x1x64: as many values as
  the input. A 1-channel input with an injective first block (as in the CIFAR
  layout) is avoided on purpose: there the half that F reads is all zeros, its
  BN running variance decays to 0 in training, and the trained network's
  inverse amplifies float rounding by 1/sqrt(eps) ~ 316 per such layer.
  """
  c = base()
  c.input_shape = (8, 8, 1)
  c.init_ds = 2
  c.blocks = (2, 3, 2)
  c.strides = (2, 1, 2)
  c.widths = (8, 8, 32)
  c.bottleneck_mult = 1
  c.dropout_rate = 0.2
  return c


def cifar10() -> ml_collections.ConfigDict:
  """The authors' released CIFAR-10 i-RevNet: 6,274,826 parameters."""
  c = base()
  c.dropout_rate = 0.1
  return c


def bijective() -> ml_collections.ConfigDict:
  """The paper's ImageNet i-RevNet (b), kernels (1, 3, 1): 29,201,092 parameters.

  3x224x224 -> psi(2) -> 12x112x112 -> ... -> z of 3072x7x7: exactly bijective.
  """
  c = base()
  c.num_classes = 1000
  c.input_shape = (224, 224, 3)
  c.init_ds = 2
  c.blocks = (6, 16, 72, 6)
  c.strides = (2, 2, 2, 2)
  c.widths = (24, 96, 384, 1536)
  c.kernel_sizes = (1, 3, 1)
  return c


def bijective_released() -> ml_collections.ConfigDict:
  """ImageNet (b) as released with the authors' pretrained weights, kernels (3, 3, 3): 125,120,356 parameters."""
  c = bijective()
  c.kernel_sizes = (3, 3, 3)
  return c


def injective(base_width: int = 64) -> ml_collections.ConfigDict:
  """A reconstruction of the paper's injective ImageNet i-RevNet (a).

  The paper gives only "injective, 181M parameters, 24.7% top-1 error"; its
  layout is unpublished. This one follows the released code's style: stem
  psi(4) (48 channels at 56x56), strides (1, 2, 2, 2), blocks (6, 16, 72, 6),
  kernels (1, 3, 1), widths w * (1, 4, 16, 64). The first block pads 48 -> 2w
  channels. w = 64 gives 193,465,960 parameters; w = 62 gives 181,819,706,
  closest to the paper's figure.
  """
  c = bijective()
  c.init_ds = 4
  c.strides = (1, 2, 2, 2)
  c.widths = tuple(base_width * m for m in (1, 4, 16, 64))
  return c


PRESETS = {
    'digits': digits,
    'cifar10': cifar10,
    'bijective': bijective,
    'bijective_released': bijective_released,
    'injective': injective,
}


def layout(config) -> Architecture:
  """Validates a model config and returns its block-by-block `Architecture`."""
  validation.check_fields(config, base().keys(), "arch='irevnet'", 'irevnet_jax.presets.base()')
  h, w, c = validation.input_shape(config)
  blocks = validation.int_tuple(config, 'blocks')
  strides = validation.int_tuple(config, 'strides')
  widths = validation.int_tuple(config, 'widths')
  kernels = validation.int_tuple(config, 'kernel_sizes', 3)
  mult = int(config.bottleneck_mult)
  init_ds = int(config.init_ds)

  validation.check_stages('blocks', blocks, strides, widths)
  for k in kernels:
    if k < 1 or k % 2 == 0:
      raise UserError(
          f'model.kernel_sizes={kernels}: kernel sizes must be odd and positive '
          f'(a centred "same" convolution), e.g. (3, 3, 3) or (1, 3, 1).')
  if mult < 1:
    raise UserError(f'model.bottleneck_mult={mult} must be a positive integer, e.g. 4.')
  if init_ds < 0:
    raise UserError(f'model.init_ds={init_ds} must be 0 (no stem) or a block size >= 2.')
  validation.check_choice(config, 'dtype', validation.DTYPES)
  validation.check_choice(config, 'precision', validation.PRECISIONS,
                          "; 'highest' is needed for exact inversion in float32")
  validation.check_choice(config, 'backprop', BACKPROP_MODES)
  block_scan = validation.block_scan(config)
  stream_dtype = validation.check_choice(config, 'stream_dtype', validation.STREAM_DTYPES)
  fused_bn_relu = validation.check_bool(config, 'fused_bn_relu')
  fused_kernel = validation.check_choice(config, 'fused_kernel', validation.FUSED_KERNELS)
  if not 0.0 <= float(config.dropout_rate) < 1.0:
    raise UserError(f'model.dropout_rate={config.dropout_rate} must be in [0, 1).')

  ds = max(init_ds, 1)
  validation.check_divisible((h, w, c), ds * 2 ** sum(s == 2 for s in strides),
                             f'init_ds={init_ds}, strides={strides}')

  spatial = (h // ds, w // ds)
  in_channels = c * ds * ds
  stages = []
  for index, (n, stride, width) in enumerate(zip(blocks, strides, widths)):
    where = f'stage {index} (blocks={blocks}, strides={strides}, widths={widths})'
    if width // mult < 1:
      raise UserError(
          f'model.widths[{index}]={width} is smaller than bottleneck_mult={mult}: F would '
          f'have no hidden channels; use widths[{index}] >= {mult}.')
    if stride == 2:
      if in_channels % 2:
        raise UserError(
            f'{where}: a stride-2 block splits its {in_channels} input channels into unequal '
            f'halves; make the first stage stride 1 (it then pads injectively), or use '
            f'model.init_ds=2 so that the input has an even channel count.')
      if width != 2 * in_channels:
        raise UserError(
            f'{where}: a stride-2 block quadruples each half ({in_channels // 2} -> '
            f'{2 * in_channels} channels), so model.widths[{index}] must be '
            f'{2 * in_channels}, not {width}.')
      pad = 0
    else:
      if 2 * width < in_channels:
        raise UserError(
            f'{where}: a stride-1 block cannot shrink {in_channels} channels to 2 x {width}; '
            f'use model.widths[{index}] >= {(in_channels + 1) // 2} '
            f'(= {in_channels // 2} keeps it bijective).')
      pad = 2 * width - in_channels
    first = BlockSpec(in_channels, width, stride, pad, first=(index == 0), spatial=spatial)
    spatial = (spatial[0] // stride, spatial[1] // stride)
    rest = BlockSpec(2 * width, width, 1, 0, first=False, spatial=spatial) if n > 1 else None
    stages.append(StageSpec(first, rest, n - 1))
    in_channels = 2 * width

  return Architecture(
      input_shape=(h, w, c), init_ds=ds, stages=tuple(stages), kernel_sizes=kernels,
      bottleneck_mult=mult, dropout_rate=float(config.dropout_rate), dtype=config.dtype,
      precision=config.precision, num_classes=int(config.num_classes),
      backprop=config.backprop, block_scan=block_scan, stream_dtype=stream_dtype,
      fused_bn_relu=fused_bn_relu, fused_kernel=fused_kernel)
