"""ImageNet i-RevNet (b) as released with the authors' weights: kernels (3, 3, 3), 125,120,356 parameters.

Reproduces: the released pretrained model, 74.02% top-1 / 91.59% top-5 (reference
notes §3): batch 256, 128 epochs, lr 0.1 x 0.1^(epoch // 32), weight decay 1e-4.

Command:  python -m experiments.main --config=experiments/configs/bijective_released.py --workdir=runs/bijective_released
Expected: ~74% top-1 accuracy on the ImageNet validation set.
"""
from experiments.configs import bijective
from irevnet_jax import presets


def get_config():
  c = bijective.get_config()
  c.model = presets.bijective_released()
  c.num_epochs = 128.0
  return c
