"""The experiment config of the tiny i-RevNet in tests/fixtures/authors_irevnet/: the released
config (experiments/configs/bijective_released.py) with two stages of two blocks on 64x64 images
and 5 classes, on a few synthetic images, training 2 steps (for fine-tuning tests).

    python -m experiments.import_weights --config=tests/authors_tiny_config.py \\
        --weights=tests/fixtures/authors_irevnet/checkpoint_tiny_state_dict.npz --workdir=/tmp/tiny
"""
from experiments.configs import bijective_released


def get_config():
  c = bijective_released.get_config()
  c.model.input_shape = (64, 64, 3)     # the authors' in_shape=[3, 64, 64]
  c.model.num_classes = 5
  c.model.init_ds = 2
  c.model.blocks = (2, 2)
  c.model.strides = (2, 2)
  c.model.widths = (24, 96)
  c.model.kernel_sizes = (3, 3, 3)
  c.dataset.name = 'synthetic'
  c.dataset.num_classes = 5
  c.dataset.num_train_examples = 32
  c.dataset.num_eval_examples = 12
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_train_steps = 2
  c.learning_rate = 1e-3
  c.eval_inversion_examples = -1
  c.keep_checkpoints = 2
  return c
