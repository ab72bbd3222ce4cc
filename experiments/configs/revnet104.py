"""The RevNet authors' RevNet-104 (Gomez et al. 2017): units (2, 2, 11, 2), 45,428,072 parameters.

Not in the i-RevNet paper's table; the RevNet README reports 23.10% top-1 error
for it. Same units, stem, filters and recipe as revnet56.py (reversible backprop,
SGD momentum 0.9, weight decay 1e-4, batch 256, lr 0.1 divided by 10 every ~32
epochs, ~120 epochs; inception-style crops, flips, colour distortion, images in
[0, 1]: `common.imagenet_config`; learning_rate = 0.1 * B / 256 for a global batch B).

Command:  python -m experiments.main --config=experiments/configs/revnet104.py --workdir=runs/revnet104
Expected: ~23.1% top-1 error on the ImageNet validation set after ~120 epochs.
"""
from experiments.configs import revnet56
from irevnet_jax import baselines


def get_config():
  c = revnet56.get_config()
  c.model = baselines.revnet104()
  return c
