"""The embedded default: a small, exactly bijective i-RevNet on scikit-learn's 8x8 digits.

Reproduces: nothing from the paper; it shows the whole job (training, evaluation,
exact inversion, checkpoints) on real data that ships with scikit-learn, in
minutes on a laptop CPU.

Model: 8x8x1 -> psi(2) -> 4x4x4 -> stage 0 (2 blocks, stride 2) -> 2x2x16 ->
stage 1 (3 blocks) -> stage 2 (2 blocks, stride 2) -> z of 1x1x64: as many
values as the input, no padding (57,930 parameters). It overrides the layout of
`presets.digits()`, whose first block pads the 1-channel input to 32 channels:
there the half that F reads is all zeros, its BatchNorm running variance decays
to 0 during training, and the trained network inverts with a relative error of
~0.4 instead of ~1e-7.

Command:  python -m experiments.main --workdir=runs/digits
Expected: ~98% test accuracy (97.8-98.3% over seeds 0-2), eval/inversion_rel_error
          ~6e-8, in about a minute on 2 CPU cores.
"""
from experiments.configs import common
from irevnet_jax import presets


def get_config():
  model = presets.digits()
  model.init_ds = 2
  model.blocks = (2, 3, 2)
  model.strides = (2, 1, 2)
  model.widths = (8, 8, 32)
  model.bottleneck_mult = 1
  model.dropout_rate = 0.2
  c = common.base_config(model)
  c.dataset.name = 'digits'
  c.batch_size = 64
  c.num_epochs = 30.0             # 675 steps of 64 images
  c.learning_rate = 0.1
  c.lr_schedule = 'cosine'
  c.warmup_epochs = 1.0
  c.weight_decay = 5e-3
  c.log_every_steps = 25
  c.eval_every_steps = 225        # every 10 epochs
  c.checkpoint_every_steps = 225
  return c
