"""ResNet v1.5 (He et al. 2016; stride in the 3x3 conv), the paper's ResNet-50 baseline.

    x (N, H, W, C) -> stem -> stages of bottleneck units -> features (N, H/32, W/32, 4 * width)
    logits = Dense(mean_HW(features))

A unit: relu(BN(conv1x1(relu(BN(conv3x3_s(relu(BN(conv1x1(x))))))), zero-init scale) + shortcut),
with a strided 1x1 projection + BN as the shortcut where the shape changes. Its BN-ReLU
pairs (and RevNet's, whose F and G are i-RevNet's `Bottleneck`) train with the fused
backward of `norm.BatchNorm(relu=True)` (model/bn_relu.py), always.
"""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from irevnet_jax.model import blocks, validation
from irevnet_jax.baselines.presets import BaselineArch
from irevnet_jax.model.blocks import centred_padding

he_normal = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv_and_norm(arch: BaselineArch, train: bool, bn_axis_name: Optional[str]):
  """The baselines' convolution (He init) and BatchNorm partials."""
  return blocks.conv_and_norm(arch.dtype, arch.precision, train, bn_axis_name, he_normal)


class Stem(nn.Module):
  """The stem, x (N, H, W, C) -> (N, H/d, W/d, stem_width); checks x's shape.

  'imagenet' (d = 4): 7x7 conv stride 2, BN, ReLU, 3x3 max-pool stride 2.
  'small' (d = 1): 3x3 conv stride 1, BN, ReLU.
  """
  arch: BaselineArch
  train: bool = False
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    validation.check_array_shape(x, self.arch.input_shape, 'x', self.arch.input_shape)
    x = jnp.asarray(x, blocks.param_dtype(self.arch.dtype))
    conv, norm = conv_and_norm(self.arch, self.train, self.bn_axis_name)
    if self.arch.stem == 'imagenet':
      x = conv(self.arch.stem_width, (7, 7), strides=(2, 2), padding=centred_padding(7))(x)
      x = norm(relu=True)(x)
      return nn.max_pool(x, (3, 3), strides=(2, 2), padding=centred_padding(3))
    return norm(relu=True)(conv(self.arch.stem_width, (3, 3), padding=centred_padding(3))(x))


class ResNetUnit(nn.Module):
  """Bottleneck unit v1.5: (N, H, W, C_in) -> (N, H/s, W/s, 4 * width)."""
  arch: BaselineArch
  width: int
  stride: int
  train: bool = False
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    conv, norm = conv_and_norm(self.arch, self.train, self.bn_axis_name)
    s = (self.stride, self.stride)
    out = 4 * self.width
    y = norm(relu=True)(conv(self.width, (1, 1))(x))
    y = norm(relu=True)(conv(self.width, (3, 3), strides=s, padding=centred_padding(3))(y))
    y = norm(scale_init=nn.initializers.zeros)(conv(out, (1, 1))(y))
    if self.stride != 1 or x.shape[-1] != out:
      x = norm(name='proj_norm')(conv(out, (1, 1), strides=s, name='proj_conv')(x))
    return nn.relu(y + x)


class ResNet(nn.Module):
  """`__call__(x, train) -> (logits (N, num_classes) float32, features (N, H', W', C'))`."""
  arch: BaselineArch
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    arch = self.arch
    x = Stem(arch, train, self.bn_axis_name, name='stem')(x)
    unit = nn.remat(ResNetUnit) if arch.backprop == 'remat' else ResNetUnit
    for i, (n, stride, width) in enumerate(zip(arch.units, arch.strides, arch.widths)):
      for j in range(n):
        x = unit(arch, width, stride if j == 0 else 1, train, self.bn_axis_name,
                 name=f'stage{i}_unit{j}')(x)
    stream = blocks.param_dtype(arch.dtype)
    logits = nn.Dense(arch.num_classes, dtype=arch.dtype, param_dtype=stream,
                      name='classifier')(jnp.mean(x, axis=(1, 2)))
    return logits.astype(stream), x
