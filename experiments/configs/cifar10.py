"""The authors' released CIFAR-10 i-RevNet (6,274,826 parameters) with their recipe.

Reproduces: the released code's CIFAR-10 result, ~94.5% test accuracy (reference
notes §3): batch 128, 200 epochs, lr 0.1 x 0.2 at epochs 60/120/160, momentum
0.9, weight decay 5e-4, pad-4 random crop + flip, per-channel normalisation.

Command:  python -m experiments.main --config=experiments/configs/cifar10.py --workdir=runs/cifar10
Expected: ~94.5% test accuracy after 200 epochs; relative inversion error ~1e-7
          (float32, precision 'highest').
"""
from ml_collections.config_dict import placeholder

from experiments.configs import common
from irevnet_jax.model import presets


def get_config():
  c = common.base_config(presets.cifar10())
  c.dataset.name = 'cifar10'
  c.dataset.data_dir = placeholder(str)       # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.dataset.normalization = 'mean_std'        # per-channel, the released code's constants
  common.synthetic_fields(c.dataset)
  c.batch_size = 128
  c.num_epochs = 200.0
  c.learning_rate = 0.1
  c.lr_schedule = 'step'
  c.lr_boundaries = (60, 120, 160)
  c.lr_decay_factor = 0.2
  c.weight_decay = 5e-4
  return c
