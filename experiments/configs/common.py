"""Training defaults shared by the experiment configs.

`base_config(model)` (from `irevnet_jax.train.config`, where every field is
documented and checked) sets every field; `imagenet_config(model)` adds the
paper's ImageNet recipe. Each config file overrides a few fields; see
docs/training.md for what each one does.
"""
import ml_collections
from ml_collections.config_dict import placeholder

from irevnet_jax.train.config import base_config


def imagenet_config(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`base_config(model)` with TFDS ImageNet and the paper's recipe (shared by every ImageNet model).

  SGD momentum 0.9, weight decay 1e-4, batch 256, lr 0.1 divided by 10 every 32
  epochs, 120 epochs, images in [0, 1]. For another global batch B scale the
  rate linearly: learning_rate = 0.1 * B / 256.
  """
  c = base_config(model)
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
  c.eval_inversion_examples = 1024   # a fixed subset: 2 exact passes each
  return c
