"""The embedded default: a small i-RevNet on scikit-learn's bundled 8x8 digits.

Reproduces: nothing from the paper; it shows the whole job (training, evaluation,
exact inversion, checkpoints) on real data that ships with scikit-learn, in
minutes on a laptop CPU.

Command:  python -m experiments.main --workdir=runs/digits
Expected: >= 97% test accuracy, eval/inversion_rel_error <= 1e-5, in under
          3 minutes on 2 CPU cores.
"""
from experiments.configs import common
from irevnet_jax import presets


def get_config():
  c = common.base_config(presets.digits())
  c.dataset.name = 'digits'
  c.batch_size = 64
  c.num_epochs = 30.0
  c.learning_rate = 0.1
  c.lr_schedule = 'cosine'
  c.warmup_epochs = 1.0
  c.weight_decay = 5e-4
  c.log_every_steps = 20
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 200
  return c
