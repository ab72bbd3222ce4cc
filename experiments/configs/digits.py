"""The embedded default: a small, exactly bijective i-RevNet on scikit-learn's 8x8 digits.

Reproduces: nothing from the paper; it shows the whole job (training, evaluation,
exact inversion, checkpoints) on real data that ships with scikit-learn, in
minutes on a laptop CPU.

Model: `presets.digits()`, exactly bijective: 8x8x1 -> psi(2) -> three stages ->
z of 1x1x64 (57,930 parameters), dropout 0.2 in F.

Command:  python -m experiments.main --workdir=runs/digits
Expected: ~98% test accuracy (96.9-98.1% over seeds 0-2), eval/inversion_rel_error
          ~6e-8, in about a minute on 2 CPU cores.
"""
from experiments.configs import common
from irevnet_jax.model import presets


def get_config():
  c = common.base_config(presets.digits())
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
