"""ImageNet i-RevNet (b) as released with the authors' weights: kernels (3, 3, 3), 125,120,356 parameters.

Reproduces: the released pretrained model, 74.02% top-1 / 91.59% top-5 (reference
notes §3), with the authors' released ImageNet script's recipe, not the paper's:
batch 256, 128 epochs, SGD momentum 0.9, lr 0.1 x 0.1^(epoch // 32), weight decay
1e-4; training images: RandomResizedCrop(224) with torchvision's defaults (area
0.08-1, aspect 3/4-4/3), horizontal flip, ColorJitter(brightness=0.87,
contrast=0.5, saturation=0.5, hue=0.2), then ImageNet mean/std normalisation;
evaluation: shorter side resized to 256, centre 224 x 224 crop, same normalisation.
(How the TensorFlow ops differ from torchvision's: docs/data_and_launch.md.)

Command:  python -m experiments.main --config=experiments/configs/bijective_released.py --workdir=runs/bijective_released
Expected: ~74% top-1 accuracy on the ImageNet validation set.
The authors' weights:  python -m experiments.import_weights --weights=ILSVRC_trained_irevnet.pth.tar --workdir=runs/released
(then experiments.evaluate / analyze / export_weights; docs/pretrained.md).
"""
from experiments.configs import bijective
from irevnet_jax.model import presets


def get_config():
  c = bijective.get_config()
  c.model = presets.bijective_released()
  c.num_epochs = 128.0
  c.lr_boundaries = (32, 64, 96)
  c.dataset.normalization = 'mean_std'        # ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)
  c.dataset.crop_sampler = 'torchvision'      # RandomResizedCrop
  c.dataset.crop_area_range = (0.08, 1.0)
  c.dataset.crop_aspect_range = (3 / 4, 4 / 3)
  c.dataset.jitter_brightness = 0.87
  c.dataset.jitter_contrast = 0.5
  c.dataset.jitter_saturation = 0.5
  c.dataset.jitter_hue = 0.2
  c.dataset.eval_crop_fraction = 224 / 256    # Resize(256) + CenterCrop(224)
  return c
