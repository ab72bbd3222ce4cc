"""The paper's ResNet-50 baseline: ResNet v1.5 (stride in the 3x3 conv), 25,557,032 parameters.

Reproduces: Table 1 of the paper, ResNet-50, 24.7% top-1 error, trained with the
recipe the paper uses for every ImageNet model (the RevNet authors' ResNet-50
config, `common.imagenet_config`): SGD momentum 0.9, weight decay 1e-4, batch 256,
lr 0.1 divided by 10 every ~32 epochs (160k iterations), ~120 epochs (600k
iterations); the RevNet code's inception-style crops (area 0.05-1), flips and colour
distortion, images in [0, 1]. For another global batch B, scale the rate linearly:
learning_rate = 0.1 * B / 256.

Command:  python -m experiments.main --config=experiments/configs/resnet50.py --workdir=runs/resnet50
Expected: ~24.7% top-1 error on the ImageNet validation set after ~120 epochs.
Small images: add --config.model.stem=small --config.model.input_shape='(8,8,1)'
          --config.model.num_classes=10 (digits; the 'imagenet' stem downsamples 4x).
"""
from experiments.configs import common
from irevnet_jax import baselines


def get_config():
  return common.imagenet_config(baselines.resnet50())
