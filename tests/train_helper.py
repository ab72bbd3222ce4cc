"""`python -m experiments.main` with a built-in interruption, for the kill / resume tests.

    python tests/train_helper.py --kill_at_step=6 --wait_for_checkpoint=4 --kill_signal=KILL \
        --workdir=... --config.num_train_steps=12 ...

All flags of experiments.main work. When the training loop asks for the batch
of step `kill_at_step` (steps done so far), the process waits until checkpoint
`wait_for_checkpoint` is on disk, then sends itself `kill_signal` (KILL: dies
at once; TERM: the runner saves after the current step and exits with 143).
TensorFlow cannot be imported here: the runs also show that training on digits
does not need it.
"""
import os
import signal
import sys
import time

sys.modules['tensorflow'] = None   # any `import tensorflow` now raises ImportError

from absl import app
from absl import flags

from experiments import main as experiment_main
from irevnet_jax import checkpoints, input_pipeline

flags.DEFINE_integer('kill_at_step', -1, 'Interrupt when the batch of this step is requested.')
flags.DEFINE_integer('wait_for_checkpoint', -1, 'Checkpoint step to wait for before that.')
flags.DEFINE_enum('kill_signal', 'KILL', ['KILL', 'TERM'], 'Signal to send to this process.')
FLAGS = flags.FLAGS


def _interrupting(batches, start_step):
  for step, batch in enumerate(batches, start=start_step):
    if step == FLAGS.kill_at_step:
      if FLAGS.wait_for_checkpoint >= 0:
        path = os.path.join(FLAGS.workdir, checkpoints.CHECKPOINT_DIR,
                            str(FLAGS.wait_for_checkpoint))
        deadline = time.time() + 120
        while not os.path.isdir(path) and time.time() < deadline:
          time.sleep(0.05)
      os.kill(os.getpid(), getattr(signal, 'SIG' + FLAGS.kill_signal))
    yield batch


def _patch_sources():
  get_source = input_pipeline.get_source

  def patched(dataset_config, model_input_shape):
    source = get_source(dataset_config, model_input_shape)
    train_batches = source.train_batches

    def interrupted(local_batch_size, process_index, process_count, seed, start_step):
      return _interrupting(train_batches(local_batch_size, process_index, process_count,
                                         seed, start_step), start_step)
    source.train_batches = interrupted
    return source

  input_pipeline.get_source = patched


def main(argv):
  _patch_sources()
  experiment_main.main(argv)


if __name__ == '__main__':
  app.run(main)
