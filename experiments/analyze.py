"""Analyses a training run: reconstruction, interpolation, probes by depth, PCA, metamers.

    python -m experiments.main --workdir=/tmp/digits        # train (the digits default)
    python -m experiments.analyze --workdir=/tmp/digits     # -> /tmp/digits/analysis/

    python -m experiments.analyze --workdir=runs/released --dataset.name=synthetic

--dataset.<field> replaces that field of the run's config.dataset, as in
experiments.evaluate (e.g. a run analysed without its own data).
--workdir may be a URL (gs://bucket/runs/x): the output is written to a local temporary
folder and copied to <workdir>/analysis/ (or a URL --out_dir) at the end.
Reads <workdir>/config.json and the latest checkpoint (or --step), computes in
float32 with precision 'highest', and writes PNGs plus report.md / report.json.
Images are shown as the pixels they came from (the model's input de-normalised
with the data source's pixel mean and std); every number is computed on the
model's input. See docs/analysis.md for what each plot shows.
"""
import dataclasses

from absl import flags
from absl import logging

from experiments import cli
from experiments import dataset_flag
from irevnet_jax.analysis import pipeline

_DEFAULTS = pipeline.Options()
flags.DEFINE_string('workdir', None, 'Training run directory (config.json + checkpoints).',
                    required=True)
flags.DEFINE_integer('step', None, 'Checkpoint step to analyse (default: the latest).')
flags.DEFINE_string('out_dir', None, 'Output directory, local or gs:// '
                    '(default: <workdir>/analysis).')
flags.DEFINE_integer('batch_size', 256, 'Examples per forward pass.')
dataset_flag.define()
_HELP = {
    'max_train_examples': 'Train examples whose features train the probes.',
    'max_eval_examples': 'Eval examples scored and reconstructed.',
    'max_contraction_examples': 'Eval examples in the intra/inter distance ratio (O(N^2)).',
    'every_k_blocks': 'Also probe after every k blocks (0: stage outputs only).',
    'pool_size': 'Average-pool feature maps to at most this grid (0: only when too big).',
    'max_feature_dim': 'Max features per depth after pooling / random projection (0: no limit).',
    'num_images': 'Images in the reconstruction grid.',
    'num_pairs': 'Image pairs in the interpolation grid.',
    'num_steps': 'Interpolation steps, end points included.',
    'num_metamers': 'Metamer pairs: a\'s logits from the representation nearest b\'s (0: none).',
    'probe_c': 'Inverse L2 strength of the logistic-regression probe.',
    'pca_fraction': 'Report the smallest PCA d reaching this share of the full accuracy.',
    'blas_threads': 'numpy / scikit-learn threads (0: library default, e.g. for big probes).',
    'seed': 'Seed of the random feature projections.',
}
for _field in dataclasses.fields(pipeline.Options):
  _define = flags.DEFINE_float if _field.type is float else flags.DEFINE_integer
  _define(_field.name, getattr(_DEFAULTS, _field.name), _HELP[_field.name])
FLAGS = flags.FLAGS


def main(argv):
  del argv  # checked by cli.run
  from irevnet_jax.analysis import outputs  # pylint: disable=g-import-not-at-top
  config, variables, step, net, source = dataset_flag.load_run_for_analysis(FLAGS.workdir,
                                                                         FLAGS.step)
  options = pipeline.Options(**{f.name: FLAGS[f.name].value
                                for f in dataclasses.fields(pipeline.Options)})
  out_dir = outputs.default_dir(FLAGS.workdir, FLAGS.out_dir)
  with outputs.local_dir(out_dir) as local:
    _analyze(net, variables, source, local, options, step, config)
  logging.info('Wrote the analysis to %s', out_dir)


def _analyze(net, variables, source, out_dir, options, step, config):
  from irevnet_jax.analysis import plots  # pylint: disable=g-import-not-at-top
  from irevnet_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  pipeline.analyze(
      net, variables,
      input_pipeline.normalized(
          source.train_batches(FLAGS.batch_size, 0, 1, seed=options.seed, start_step=0), source),
      input_pipeline.normalized(source.eval_batches(FLAGS.batch_size, 0, 1), source),
      out_dir, options,
      num_train=source.num_train_examples, num_eval=source.num_eval_examples,
      run_info={'workdir': FLAGS.workdir, 'step': step,
                'arch': config.model.get('arch', 'irevnet'), 'dataset': config.dataset.name},
      pixel_space=plots.PixelSpace(tuple(source.pixel_mean), tuple(source.pixel_std),
                                   float(source.pixel_max)))


if __name__ == '__main__':
  cli.run(main)
