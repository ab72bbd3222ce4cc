"""Training defaults shared by every experiment config (configs override a few fields)."""
import ml_collections


def base_config(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An experiment config around `model` (a preset from `irevnet_jax.presets`)."""
  c = ml_collections.ConfigDict()
  c.model = model

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'digits'        # 'digits' | 'synthetic' | TFDS names (imagenet2012, cifar10, ...)

  c.batch_size = 128               # global, over all devices and processes
  c.eval_batch_size = 256
  c.num_train_steps = -1           # > 0 wins over num_epochs
  c.num_epochs = 10.0

  c.learning_rate = 0.1            # for batch_size 256; see each config for its scaling
  c.lr_schedule = 'step'           # 'step' | 'cosine'
  c.lr_boundaries = ()             # in epochs, for 'step'
  c.lr_decay_factor = 0.1          # multiplies the rate at each boundary
  c.warmup_epochs = 0.0
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 1e-4            # L2 on all parameters, as in the paper

  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.seed = 0
  c.half_precision = False         # bfloat16 compute, float32 parameters and coupling streams
  return c
