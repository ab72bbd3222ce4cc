"""Training defaults shared by the experiment configs.

`base_config(model)` (from `irevnet_jax.train.config`, where every field is
documented and checked) sets every field; `imagenet_config(model)` adds the
paper's ImageNet recipe. Each config file overrides a few fields; see
docs/training.md for what each one does.
"""
import ml_collections
from ml_collections.config_dict import placeholder

from irevnet_jax.train.config import base_config


def synthetic_fields(dataset: ml_collections.ConfigDict):
  """Adds the optional fields of `dataset.name=synthetic` (unset), so that a TFDS config runs
  on random images with e.g. --config.dataset.name=synthetic --config.dataset.num_eval_examples=8."""
  dataset.num_classes = placeholder(int)          # None: 10
  dataset.num_train_examples = placeholder(int)   # None: 1,281,167 (ImageNet's)
  dataset.num_eval_examples = placeholder(int)    # None: 1,024


def imagenet_config(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`base_config(model)` with TFDS ImageNet and the paper's recipe (shared by every ImageNet model).

  The paper trains its ImageNet models as the RevNet code it builds on: SGD momentum
  0.9, weight decay 1e-4, batch 256, lr 0.1 divided by 10 every 32 epochs, 120 epochs;
  inception-style crops (area 0.05-1, aspect 3/4-4/3), horizontal flips, colour
  distortion, images in [0, 1]; evaluation on the central 0.875 crop. Colour distortion
  here is torchvision's ColorJitter with the RevNet code's strengths: contrast,
  saturation 0.5, hue 0.2, and brightness 0.25, the factor that moves a mid-grey pixel
  by the code's +-32/255 (docs/data_and_launch.md lists the differences). For another
  global batch B scale the rate linearly: learning_rate = 0.1 * B / 256.
  """
  c = base_config(model)
  c.dataset.name = 'imagenet2012'
  c.dataset.data_dir = placeholder(str)       # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.dataset.manual_dir = placeholder(str)     # holds ILSVRC2012_img_{train,val}.tar; see docs
  c.dataset.normalization = 'unit'            # images in [0, 1], as in the paper
  c.dataset.crop_sampler = 'inception'        # TF's sample_distorted_bounding_box
  c.dataset.crop_area_range = (0.05, 1.0)
  c.dataset.crop_aspect_range = (3 / 4, 4 / 3)
  c.dataset.jitter_brightness = 0.25
  c.dataset.jitter_contrast = 0.5
  c.dataset.jitter_saturation = 0.5
  c.dataset.jitter_hue = 0.2
  c.dataset.eval_crop_fraction = 0.875        # shorter side to 256, centre 224 x 224
  c.dataset.cpu_threads = 0                   # tf.data threads per process; 0: all cores
  synthetic_fields(c.dataset)
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
