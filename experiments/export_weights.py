"""Exports a run's checkpoint as the authors' PyTorch i-RevNet state dict.

    python -m experiments.export_weights --workdir=runs/released --output=released.pth.tar
    python -m experiments.export_weights --workdir=runs/released --output=released.npz

The suffix of --output picks the format: .pth.tar is the checkpoint dict the authors'
ImageNet script saves (epoch, arch, state_dict, best_prec1, optimizer; keys prefixed
'module.'), which their --resume reads; .pth / .pt a bare state dict for
model.load_state_dict (use --prefix='' for a model not wrapped in nn.DataParallel);
.npz the same arrays without PyTorch. The PyTorch formats need PyTorch
(pip install -e '.[torch]'). Weights are float32; BatchNorm num_batches_tracked are
an imported file's counts plus the steps trained since, or the run's step.
Works for i-RevNet runs whose layout the authors' class can build (kernels 3, 3, 3).
Errors end in one line (--verbose: traceback).
"""
from absl import flags

from experiments import cli

flags.DEFINE_string('workdir', None, 'Run directory (config.json + checkpoints).', required=True)
flags.DEFINE_string('output', None, 'The file to write: .pth.tar, .pth, .pt or .npz.',
                    required=True)
flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the latest).')
flags.DEFINE_string('prefix', 'module.', "Put before every key ('' for a bare iRevNet).")
flags.DEFINE_bool('overwrite', False, 'Replace --output if it exists.')
FLAGS = flags.FLAGS


def main(argv):
  del argv  # checked by cli.run
  from irevnet_jax.interop import runs  # pylint: disable=g-import-not-at-top
  result = runs.export_weights(FLAGS.workdir, FLAGS.output, FLAGS.step, FLAGS.prefix,
                               FLAGS.overwrite)
  counters = ('left out, as in the imported file' if result.counters is None
              else f'num_batches_tracked {result.counters}')
  kind = ("the authors' checkpoint dict (epoch, arch, state_dict, best_prec1, optimizer)"
          if result.path.endswith('.pth.tar') else
          'a NumPy state dict' if result.path.endswith('.npz') else 'a PyTorch state dict')
  print(f'Exported {FLAGS.workdir} at step {result.step} to {result.path}: {kind}, '
        f'{result.num_entries} entries, {result.num_parameters:,} parameters, {counters}.')


if __name__ == '__main__':
  cli.run(main, flag_example='--output=FILE')
