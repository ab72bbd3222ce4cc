"""Metamers of a run: images with one image's logits and another's look.

    python -m experiments.metamers --workdir=runs/digits        # -> runs/digits/analysis/
    python -m experiments.metamers --workdir=runs/released --dataset.name=synthetic \
        --dataset.num_eval_examples=16 --num_pairs=4

For pairs (a, b) of eval images of different labels: z* = the representation nearest
z_b whose logits are a's (irevnet_jax.analysis.metamers, an exact solve in the head),
x* = invert(z*). Writes metamers.png (rows a, b, x*) and metamers.json (per pair: the
logits' relative difference from a's, the pixel distances of x* to a and b, the class
that the run's classifier gives x*; the share of z's energy in the head's null space)
and prints one summary line. `experiments.analyze` writes the same as its section 5.
Only the first 4 x num_pairs eval examples are read. --dataset.<field> as in
experiments.analyze. Errors end in one line (--verbose: traceback).
"""
import os

from absl import flags
import numpy as np

from experiments import cli
from experiments import dataset_flag
from irevnet_jax import UserError

flags.DEFINE_string('workdir', None, 'Run directory (config.json + checkpoints).', required=True)
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
flags.DEFINE_string('out_dir', None, 'Output directory, local or gs:// '
                    '(default: <workdir>/analysis).')
flags.DEFINE_integer('num_pairs', 8, 'Metamer pairs (a, b) of different labels.')
dataset_flag.define()
FLAGS = flags.FLAGS


def _first_examples(batches, count):
  """(images, labels) of the first `count` unmasked examples of `batches`."""
  images, labels, n = [], [], 0
  for batch in batches:
    keep = np.asarray(batch.get('mask', np.ones(len(batch['label'])))) > 0
    images.append(np.asarray(batch['image'])[keep])
    labels.append(np.asarray(batch['label'])[keep])
    n += int(keep.sum())
    if n >= count:
      break
  if not n:
    raise UserError('The eval split is empty: no metamers (check --dataset.*).')
  return np.concatenate(images)[:count], np.concatenate(labels)[:count]


def main(argv):
  del argv  # checked by cli.run
  # pylint: disable=g-import-not-at-top
  from irevnet_jax.analysis import metamer_pairs, outputs, pipeline, plots, report
  from irevnet_jax.data import input_pipeline
  # pylint: enable=g-import-not-at-top
  if FLAGS.num_pairs < 1:
    raise UserError(f'--num_pairs={FLAGS.num_pairs} must be >= 1, e.g. 8.')
  config, variables, step, net, source = dataset_flag.load_run_for_analysis(FLAGS.workdir,
                                                                         FLAGS.step)
  count = 4 * FLAGS.num_pairs
  x, labels = _first_examples(
      input_pipeline.normalized(source.eval_batches(min(count, 256), 0, 1), source), count)
  pixel_space = plots.PixelSpace(tuple(source.pixel_mean), tuple(source.pixel_std),
                                 float(source.pixel_max))
  out_dir = outputs.default_dir(FLAGS.workdir, FLAGS.out_dir)
  with outputs.local_dir(out_dir) as local:
    result = pipeline.metamers_section(net, variables, {'x': x, 'label': labels},
                                       FLAGS.num_pairs, os.path.join(local, 'metamers.png'),
                                       pixel_space)
    if result.get('skipped'):
      raise UserError(f'{result["skipped"]} Use a run with at least two classes in its '
                      f'first {count} eval examples.')
    result['run'] = {'workdir': FLAGS.workdir, 'step': step, 'dataset': config.dataset.name}
    report.write_json(result, os.path.join(local, 'metamers.json'))
  print(metamer_pairs.summary_line(result))
  print(f'Wrote metamers.png and metamers.json to {out_dir}.')


if __name__ == '__main__':
  cli.run(main)
