"""Issue 18 item 10: without ImageNet, the commands print the preparation guide and nothing
else. TensorFlow's import prints C++ log lines (oneDNN, absl's pre-init warning) that no
TF_CPP_MIN_LOG_LEVEL hides, so the missing folder is found before TensorFlow is imported."""
import os
import subprocess
import sys

import pytest

from irevnet_jax.data import input_pipeline, tfds_options, tfds_records
from irevnet_jax.errors import UserError
import train_testlib as lib


def guide(data_dir):
  """The whole output expected: the guide, once, after `Error: `."""
  opts = tfds_options.parse_options({'name': 'imagenet2012', 'data_dir': data_dir})
  text = tfds_records.imagenet_missing_message(opts, os.path.join(data_dir, 'imagenet2012'))
  return f'Error: {text}\n'


def start(module, *args, **env):
  return subprocess.Popen([sys.executable, '-m', module, *args], cwd=lib.REPO,
                          env={**lib.env_with_devices(1), **env},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_missing_folder_is_found_from_the_file_system(tmp_path):
  def refuse(fields, shape=(64, 64, 3)):
    return tfds_records.refuse_missing_imagenet(tfds_options.parse_options(fields, shape))

  fields = {'name': 'imagenet', 'data_dir': str(tmp_path)}
  with pytest.raises(UserError) as info:
    refuse(fields)
  assert f'Error: {info.value}\n' == guide(str(tmp_path))
  assert str(info.value).endswith('use random images instead: --config.dataset.name=synthetic.')
  with tfds_options.flag_prefix('--dataset.'):   # evaluate, analyze: experiments/dataset_flag.py
    with pytest.raises(UserError, match=r'instead: --dataset\.name=synthetic\.$'):
      refuse(fields)
  with pytest.raises(UserError, match='model.input_shape'):   # the shape's error comes first
    input_pipeline.get_source(fields, (8, 8, 1), 1000)
  os.mkdir(tmp_path / 'imagenet2012')             # something is there: TFDS decides
  assert refuse(fields) is None
  assert refuse({'name': 'imagenet2012', 'data_dir': 'gs://bucket/tfds'}) is None
  assert refuse({'name': 'cifar10', 'data_dir': str(tmp_path / 'none')}, (32, 32, 3)) is None


def test_the_commands_print_the_guide_alone(tmp_path):
  empty = str(tmp_path / 'tfds')
  os.mkdir(empty)
  # evaluate and analyze reach the same check through input_pipeline.get_source (checked by
  # hand on an imported released-size run: docs/pretrained.md); here the training command.
  process = start('experiments.main', f'--config={lib.DIGITS_CONFIG}',
                  '--config.dataset.name=imagenet2012', '--config.model.input_shape=(8, 8, 3)',
                  '--config.model.widths=(24, 24, 96)', '--config.model.num_classes=1000',
                  f'--workdir={tmp_path / "run"}', TFDS_DATA_DIR=empty)
  code, output = lib.finish(process)
  assert (code, output) == (1, guide(empty))
  assert not os.path.exists(tmp_path / 'run')
  assert os.listdir(empty) == []
