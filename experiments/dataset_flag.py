"""The --dataset.<field> flags that `experiments.evaluate` and `experiments.analyze` share.

    from experiments import dataset_flag
    dataset_flag.define()                   # at import, beside the command's other flags
    config = dataset_flag.apply(config)     # the run's config with the fields given replaced

--dataset.<field>=VALUE replaces that field of the run's config.dataset (the names of
--config.dataset.<field> in experiments.main); the others keep the run's values, e.g.
its preprocessing: `--dataset.name=synthetic` evaluates or analyses a run without its data.
"""
from absl import flags
import ml_collections
from ml_collections.config_dict import placeholder

from experiments import cli

FLAGS = flags.FLAGS
HELP = "--dataset.<field>=VALUE replaces that field of the run's config.dataset."


def _overrides() -> ml_collections.ConfigDict:
  """Every dataset field a source reads, unset (None: keep the run's value), typed."""
  from irevnet_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  overrides = ml_collections.ConfigDict()
  for field, kind in input_pipeline.DATASET_FIELDS.items():
    overrides[field] = placeholder(kind)
  return overrides


def define():
  cli.define_config_dict_flag('dataset', _overrides(), HELP)


def given() -> dict:
  """{field: value} of the --dataset.<field> flags given (None: not given)."""
  return dict(FLAGS.dataset.items())


def flag_names():
  """Inside, errors name dataset fields as this command's --dataset.<field> flags, where
  experiments.main's say --config.dataset.<field> (e.g. the 'ImageNet not prepared' guide's
  `--dataset.name=synthetic`)."""
  from irevnet_jax.data import tfds_options  # pylint: disable=g-import-not-at-top
  return tfds_options.flag_prefix('--dataset.')


def apply(config, dtype=None, precision=None) -> ml_collections.ConfigDict:
  """A checked copy of the run's `config` with the --dataset.<field> values given."""
  from irevnet_jax.train import evaluate_run  # pylint: disable=g-import-not-at-top
  return evaluate_run.with_overrides(config, given(), dtype, precision)


def load_run_for_analysis(workdir: str, step=None):
  """(config, variables, step, net, source) of a run for `analyze` and `metamers`: its
  checkpoint (`step`, default the latest), its config with the --dataset.<field> flags
  applied, the float32 'highest' net the analyses compute with, and the data source."""
  # pylint: disable=g-import-not-at-top
  from absl import logging
  from irevnet_jax import nets
  from irevnet_jax.analysis import pipeline
  from irevnet_jax.run import checkpoints
  from irevnet_jax.train import program
  # pylint: enable=g-import-not-at-top
  config, variables, step = checkpoints.load_run(workdir, step)
  logging.info('Loaded %s at step %d.', workdir, step)
  with flag_names():
    config = apply(config)
    net = nets.build(pipeline.analysis_model_config(config.model))
    source = program.source_for(config)
  return config, variables, step, net, source
