"""The paper's RevNet-56 baseline (Gomez et al. 2017): 27,553,128 parameters.

The RevNet authors' ImageNet config (`revnet-54` in their code, "RevNet-56" in
the papers): 7x7 stem + max-pool with 128 channels, units (2, 2, 3, 2),
filters (128, 256, 512, 832), bottleneck units of two additive couplings.
Backprop 'reversible': activations are stored only at each stage's first,
non-invertible unit and rebuilt elsewhere.

Reproduces: Table 1 of the paper, RevNet-56, 25.2% top-1 error, with the RevNet
paper's own recipe, which the i-RevNet paper reuses (`common.imagenet_config`): SGD
momentum 0.9, weight decay 1e-4, batch 256, lr 0.1 divided by 10 every ~32 epochs
(160k iterations), ~120 epochs (600k iterations); inception-style crops (area
0.05-1), flips, colour distortion, images in [0, 1]. For another global batch B,
scale the rate linearly: learning_rate = 0.1 * B / 256.

Command:  python -m experiments.main --config=experiments/configs/revnet56.py --workdir=runs/revnet56
Expected: ~25.2% top-1 error on the ImageNet validation set after ~120 epochs.
Small images: add --config.model.stem=small --config.model.input_shape='(8,8,1)'
          --config.model.num_classes=10 (digits; the 'imagenet' stem downsamples 4x).
"""
from experiments.configs import common
from irevnet_jax import baselines


def get_config():
  return common.imagenet_config(baselines.revnet56())
