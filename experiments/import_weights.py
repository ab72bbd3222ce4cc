"""Imports the authors' PyTorch i-RevNet checkpoint into a run directory.

    python -m experiments.import_weights --weights=ILSVRC_trained_irevnet.pth.tar --workdir=runs/released
    python -m experiments.evaluate --workdir=runs/released            # loss, top-1/5, inversion
    python -m experiments.analyze --workdir=runs/released             # the paper's analyses
    python -m experiments.export_weights --workdir=runs/released --output=released.pth.tar

The weights file: the authors' checkpoint (.pth.tar, as their ImageNet script saves it,
or a bare state dict .pth; PyTorch needed: pip install -e '.[torch]') or the same state
dict as .npz (no PyTorch needed). --config (default: the released model,
experiments/configs/bijective_released.py) with --config.<field> overrides must give
the architecture the file was made with; an error names the field that differs and the
value the file implies. The run directory gets config.json and a checkpoint at step 0
holding a full train state (the file's weights and BatchNorm statistics, a fresh
optimizer state), so every command reads it as a run; to fine-tune, run
experiments.main with the same --config and overrides (other training fields need
--allow_config_change). A workdir that holds checkpoints is refused, and nothing is
written unless the whole file converts. Errors end in one line (--verbose: traceback).
"""
import os

from absl import flags

from experiments import cli

RELEASED_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'bijective_released.py')

cli.define_config_flag('config', RELEASED_CONFIG,
                       'Experiment config file whose model is the one in --weights.')
flags.DEFINE_string('weights', None, "The authors' checkpoint: .pth.tar, .pth or .npz.",
                    required=True)
flags.DEFINE_string('workdir', None, 'The new run directory.', required=True)
flags.DEFINE_bool('weights_only', True,
                  'Read PyTorch files with torch.load(weights_only=True): tensors and plain '
                  'containers only. --noweights_only unpickles anything: only for a file you '
                  'trust that needs it.')
FLAGS = flags.FLAGS


def main(argv):
  del argv  # checked by cli.run
  from irevnet_jax.interop import authors, runs  # pylint: disable=g-import-not-at-top
  try:
    result = runs.import_weights(FLAGS.weights, FLAGS.config, FLAGS.workdir, FLAGS.weights_only)
  except authors.CheckpointFormatError as error:
    if 'weights_only=False' not in str(error):
      raise
    raise authors.CheckpointFormatError(f'{error} In this command: --noweights_only.') from None
  print(f'Imported {FLAGS.weights} ({result.num_entries} entries, {result.num_parameters:,} '
        f'parameters) into {FLAGS.workdir}: config.json and checkpoint {result.step} (a full '
        f'train state: fresh optimizer state, rng from seed {FLAGS.config.seed}).')
  print(f'Next: python -m experiments.evaluate --workdir={FLAGS.workdir}')


if __name__ == '__main__':
  cli.run(main, flag_example='--weights=FILE')
