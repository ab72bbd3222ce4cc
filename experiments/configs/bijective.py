"""The paper's bijective ImageNet i-RevNet (b): kernels (1, 3, 1), 29,201,092 parameters.

Reproduces: Table 1 of the paper, i-RevNet (b), 26.7% top-1 error, with the paper's
recipe (`common.imagenet_config`): SGD momentum 0.9, weight decay 1e-4, batch 256,
lr 0.1 divided by 10 every ~32 epochs, ~120 epochs; inception-style crops (area
0.05-1, aspect 3/4-4/3), horizontal flips, colour distortion (brightness 0.25,
contrast 0.5, saturation 0.5, hue 0.2), images in [0, 1]; evaluation on the central
0.875 crop. For another global batch B, scale the rate linearly:
learning_rate = 0.1 * B / 256.

Command:  python -m experiments.main --config=experiments/configs/bijective.py --workdir=runs/bijective
Expected: ~26.7% top-1 error on the ImageNet validation set after ~120 epochs.
"""
from experiments.configs import common
from irevnet_jax.model import presets


def get_config():
  return common.imagenet_config(presets.bijective())
