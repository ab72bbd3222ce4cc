"""The frozen layout a validated model config becomes: what the Flax modules are built from.

`presets.layout(config)` checks a config and returns an `Architecture`; the blocks,
the reversible engine and the network read these types and nothing of the config.
"""
import dataclasses
import math
from typing import Optional, Tuple


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One i-RevNet block. `in_channels` counts both halves of the incoming pair."""
  in_channels: int
  width: int              # channels of each output half
  stride: int             # 1 or 2
  pad: int                # injective zero channels added before the coupling (stride 1 only)
  first: bool             # the network's first block: F has no leading BN-ReLU
  spatial: Tuple[int, int]  # (H, W) of the incoming pair

  @property
  def f_in_channels(self) -> int:
    return (self.in_channels + self.pad) // 2


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """A stage: one leading block, then `num_rest` alike stride-1 blocks (run as one scan)."""
  first: BlockSpec
  rest: Optional[BlockSpec]
  num_rest: int


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A validated, hashable i-RevNet layout: what the Flax module is built from."""
  input_shape: Tuple[int, int, int]
  init_ds: int
  stages: Tuple[StageSpec, ...]
  kernel_sizes: Tuple[int, int, int]
  bottleneck_mult: int
  dropout_rate: float
  dtype: str
  precision: str
  num_classes: int
  backprop: str
  block_scan: str = 'auto'
  stream_dtype: str = 'float32'   # 'bfloat16': bfloat16 streams where dtype is bfloat16
  fused_bn_relu: bool = True    # BN-ReLU pairs with the lean backward (model/bn_relu.py)
  fused_kernel: str = 'none'    # 'pallas': BN-ReLU-conv pairs in one kernel (pallas_conv.py)
  invertible = True

  @property
  def z_shape(self) -> Tuple[int, int, int]:
    """(H, W, C) of the representation z."""
    last = self.stages[-1].first
    h, w = last.spatial
    s = last.stride
    return (h // s, w // s, 2 * last.width)

  @property
  def num_blocks(self) -> int:
    return sum(1 + s.num_rest for s in self.stages)

  def describe(self) -> str:
    """A short human-readable summary of the layout (one line per stage)."""
    lines = [f'input {self.input_shape}, stem psi({self.init_ds})' if self.init_ds > 1
             else f'input {self.input_shape}, no stem']
    for i, stage in enumerate(self.stages):
      b = stage.first
      inj = f', pads {b.in_channels}->{2 * b.width}' if b.pad else ''
      lines.append(f'stage {i}: {1 + stage.num_rest} blocks, stride {b.stride}, '
                   f'width {b.width}, at {b.spatial[0]}x{b.spatial[1]}{inj}')
    h, w, c = self.z_shape
    lines.append(f'z: {h}x{w}x{c} = {math.prod(self.z_shape)} values per image')
    return '\n'.join(lines)
