"""The paper's bijective ImageNet i-RevNet (b): kernels (1, 3, 1), 29,201,092 parameters.

Reproduces: Table 1 of the paper, i-RevNet (b), 26.7% top-1 error: SGD momentum
0.9, weight decay 1e-4, batch 256, lr 0.1 divided by 10 every ~32 epochs, ~120
epochs, images in [0, 1]. For another global batch B, scale the rate linearly:
learning_rate = 0.1 * B / 256.

Command:  python -m experiments.main --config=experiments/configs/bijective.py --workdir=runs/bijective
Expected: ~26.7% top-1 error on the ImageNet validation set after ~120 epochs.
"""
from ml_collections.config_dict import placeholder

from experiments.configs import common
from irevnet_jax import presets


def get_config():
  c = common.base_config(presets.bijective())
  c.dataset.name = 'imagenet2012'
  c.dataset.data_dir = placeholder(str)       # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.dataset.manual_dir = placeholder(str)     # holds ILSVRC2012_img_{train,val}.tar; see docs
  c.dataset.normalization = 'unit'            # images in [0, 1], as in the paper
  c.dataset.shuffle_buffer = 10_000
  c.batch_size = 256
  c.num_epochs = 120.0
  c.learning_rate = 0.1
  c.lr_schedule = 'step'
  c.lr_boundaries = (32, 64, 96)
  c.lr_decay_factor = 0.1
  c.weight_decay = 1e-4
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000
  return c
