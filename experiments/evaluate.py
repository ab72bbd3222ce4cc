"""Evaluates a run's checkpoint (trained here or imported) without training.

    python -m experiments.evaluate --workdir=runs/released
    python -m experiments.evaluate --workdir=runs/digits --step=500
    python -m experiments.evaluate --workdir=runs/released --dataset.data_dir=/data/tfds
    python -m experiments.evaluate --workdir=runs/tiny --dataset.name=synthetic --dataset.num_eval_examples=64

Prints loss, top-1 / top-5 accuracy over the whole eval split and the relative
inversion error ||invert(forward(x)) - x|| / ||x|| (on the model's input, exact
float32 model) on a fixed subset of it, as the training loop's evaluation
computes them, and appends them to <workdir>/metrics.jsonl at the checkpoint's
step as evaluate/<dataset name>/<metric> (TensorBoard too), once: the same record
(step, dataset, settings) is not appended again. A run that is training (its
workdir is locked) is evaluated but not written to. Batches hold at most the
examples there are (32 images are one batch of 32, not padded to 256).

--dataset.<field> replaces that field of the run's config.dataset (the names of
--config.dataset.<field> in experiments.main); the others keep the run's values,
e.g. its preprocessing. Errors end in one line (--verbose: traceback).
"""
from absl import flags
from absl import logging

from experiments import cli
from experiments import dataset_flag


flags.DEFINE_string('workdir', None, 'Run directory (config.json + checkpoints).', required=True)
flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: the latest).')
dataset_flag.define()
flags.DEFINE_integer('batch_size', None,
                     "Global eval batch (default: the run's eval_batch_size).")
flags.DEFINE_integer('inversion_examples', None,
                     "Eval examples whose inversion is measured: -1 all, 0 none "
                     "(default: the run's eval_inversion_examples).")
flags.DEFINE_enum('dtype', None, ['auto', 'float32', 'bfloat16'],
                  "Compute dtype of the forward pass (default: the run's train_dtype).")
flags.DEFINE_enum('precision', None, ['default', 'high', 'highest'],
                  "Convolution precision of the forward pass (default: the run's "
                  "train_precision).")
FLAGS = flags.FLAGS


def main(argv):
  del argv  # checked by cli.run
  from irevnet_jax.train import evaluate_run  # pylint: disable=g-import-not-at-top
  lock, busy = evaluate_run.lock_for_writing(FLAGS.workdir)
  try:
    with dataset_flag.flag_names():
      result = evaluate_run.evaluate_run(
          FLAGS.workdir, FLAGS.step, dataset_flag.given(), FLAGS.batch_size,
          FLAGS.inversion_examples, FLAGS.dtype, FLAGS.precision)
    print(evaluate_run.table(result))
    if lock is None:
      logging.warning('Not recorded in metrics.jsonl: %s', busy)
    elif evaluate_run.record(result):
      print(f'Appended to {FLAGS.workdir}/metrics.jsonl at step {result.step} as '
            f'{evaluate_run.PREFIX}/{result.dataset}/*.')
    else:
      print(f'Already in {FLAGS.workdir}/metrics.jsonl at step {result.step} as '
            f'{evaluate_run.PREFIX}/{result.dataset}/* (not appended again).')
  finally:
    if lock is not None:
      lock.release()


if __name__ == '__main__':
  cli.run(main)
