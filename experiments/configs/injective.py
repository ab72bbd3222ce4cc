"""A reconstruction of the paper's injective ImageNet i-RevNet (a): 193,465,960 parameters.

The paper reports only "injective, 181M parameters, 24.7% top-1 error"; the layout
is unpublished. This reconstruction (see `irevnet_jax.presets.injective`): stem
psi(4), strides (1, 2, 2, 2), blocks (6, 16, 72, 6), kernels (1, 3, 1), widths
64 * (1, 4, 16, 64); `--config.model.widths='(62,248,992,3968)'` gives 181,819,706
parameters, closest to the paper's count. Recipe: the paper's, as for (b)
(`common.imagenet_config`: inception crops, flips, colour distortion, [0, 1] images).

Command:  python -m experiments.main --config=experiments/configs/injective.py --workdir=runs/injective
Expected: ~24.7% top-1 error (the paper's figure for its own, unpublished layout).
"""
from experiments.configs import bijective
from irevnet_jax.model import presets


def get_config():
  c = bijective.get_config()
  c.model = presets.injective()
  return c
