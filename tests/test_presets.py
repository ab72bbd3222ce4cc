"""Config validation: every config that cannot be invertible is a ValueError that names the fix."""
import importlib

import ml_collections
import pytest

import irevnet_jax
from irevnet_jax.model import presets

from model_utils import tiny_config

BAD_CONFIGS = [
    # (overrides of the CIFAR preset, words the message must contain)
    (dict(input_shape=(30, 30, 3)), ['model.input_shape', '(28, 28, 3)']),
    (dict(widths=(16, 60, 256)), ['model.widths[1]', 'must be 64']),
    (dict(widths=(16, 64, 32), strides=(1, 2, 1)), ['model.widths[2]', '>= 64', 'shrink']),
    (dict(strides=(2, 2, 2), widths=(6, 24, 96)), ['unequal', 'init_ds=2']),
    (dict(kernel_sizes=(3, 2, 3)), ['model.kernel_sizes', 'odd']),
    (dict(blocks=(18, 18)), ['model.blocks', 'model.strides', 'model.widths', 'one entry per stage']),
    (dict(strides=(1, 3, 2)), ['model.strides', '1 or 2']),
    (dict(widths=(2, 8, 32), bottleneck_mult=4, input_shape=(32, 32, 3)), ['model.widths[0]', '>= 4']),
    (dict(precision='tf32'), ['model.precision', 'highest']),
    (dict(backprop='magic'), ['model.backprop', 'reversible']),
    (dict(dtype='int8'), ['model.dtype']),
]


@pytest.mark.parametrize('overrides,words', BAD_CONFIGS)
def test_invalid_configs_raise_helpful_value_errors(overrides, words):
  config = presets.cifar10()
  for k, v in overrides.items():
    config[k] = v
  with pytest.raises(ValueError) as info:
    irevnet_jax.build(config)
  for word in words:
    assert word in str(info.value), (word, str(info.value))


def test_a_suggested_fix_builds():
  config = presets.cifar10()
  config.input_shape = (28, 28, 3)   # what the input_shape error above suggests
  irevnet_jax.build(config)


def test_unknown_field_is_rejected():
  config = tiny_config()
  config.widht = 3
  with pytest.raises(ValueError, match='widht'):
    irevnet_jax.build(config)


def test_stride1_shrinking_block_is_rejected():
  config = tiny_config(input_shape=(8, 8, 8), init_ds=0, blocks=(1,), strides=(1,), widths=(2,),
                       bottleneck_mult=1)
  with pytest.raises(ValueError, match=r'model.widths\[0\] >= 4'):
    irevnet_jax.build(config)


def test_layout_of_the_released_cifar_model():
  arch = presets.layout(presets.cifar10())
  first = arch.stages[0].first
  assert (first.in_channels, first.pad, first.f_in_channels, first.first) == (3, 29, 16, True)
  assert [s.first.stride for s in arch.stages] == [1, 2, 2]
  assert arch.z_shape == (8, 8, 512)


@pytest.mark.parametrize('name', ['digits', 'cifar10', 'bijective', 'bijective_released',
                                  'injective'])
def test_experiment_configs_use_the_library_presets(name):
  config = importlib.import_module(f'experiments.configs.{name}').get_config()
  assert config.model.to_dict() == presets.PRESETS[name]().to_dict()
  irevnet_jax.build(config.model)


def test_fused_bn_relu_is_optional_in_older_configs_and_must_be_a_bool():
  fields = presets.cifar10().to_dict()
  del fields['fused_bn_relu']        # a config written before the field existed
  assert presets.layout(ml_collections.ConfigDict(fields)).fused_bn_relu is True
  fields['fused_bn_relu'] = 'no'
  with pytest.raises(ValueError, match=r"model.fused_bn_relu='no' must be True or False"):
    presets.layout(ml_collections.ConfigDict(fields))


def test_fused_kernel_is_optional_in_older_configs_and_one_of_its_choices():
  fields = presets.cifar10().to_dict()
  del fields['fused_kernel']         # a config written before the field existed
  assert presets.layout(ml_collections.ConfigDict(fields)).fused_kernel == 'none'
  fields['fused_kernel'] = 'triton'
  with pytest.raises(irevnet_jax.UserError,
                     match=r"model.fused_kernel='triton' is not one of \('none', 'pallas'\)"):
    presets.layout(ml_collections.ConfigDict(fields))
