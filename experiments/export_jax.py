"""Exports a run's forward and invert as `jax.export` artifacts that any JAX program can load.

    python -m experiments.export_jax --workdir=runs/digits --output=exported/digits
    python -m experiments.export_jax --workdir=runs/released --output=exported/released \\
        --platforms=cuda,tpu --step=100000

Writes forward.jax_export, invert.jax_export (i-RevNet runs), weights.npz and
manifest.json to --output. The functions are the eval-mode network at float32 and
convolution precision 'highest' (exact inversion), with a symbolic batch size, lowered
for each of --platforms. Loading them needs jax and numpy only, not irevnet_jax:

    weights = dict(np.load('weights.npz'))
    invert = jax.export.deserialize(open('invert.jax_export', 'rb').read())
    x = invert.call(weights, z)

Details: irevnet_jax/export.py and docs/export.md. Errors end in one line (--verbose:
traceback).
"""
from absl import flags

from experiments import cli

flags.DEFINE_string('workdir', None, 'Run directory (config.json + checkpoints).', required=True)
flags.DEFINE_string('output', None, 'Directory to write the artifacts to.', required=True)
flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the latest).')
flags.DEFINE_list('platforms', ['cpu', 'cuda', 'tpu'], 'Platforms to lower for.')
flags.DEFINE_bool('overwrite', False, 'Replace an export already in --output.')
FLAGS = flags.FLAGS


def main(argv):
  del argv  # checked by cli.run
  from irevnet_jax import export  # pylint: disable=g-import-not-at-top
  manifest = export.export_run(FLAGS.workdir, FLAGS.output, FLAGS.step, FLAGS.platforms,
                               FLAGS.overwrite)
  for name, io in manifest['functions'].items():
    print(f"  {name}.jax_export: (weights, {io['inputs'][1]}) -> {', '.join(io['outputs'])}")
  print(f"Exported {FLAGS.workdir} at step {manifest['step']} to {FLAGS.output} for "
        f"{', '.join(manifest['platforms'])}: {manifest['weights']['parameters']:,} parameters "
        f"in {manifest['weights']['file']}.")


if __name__ == '__main__':
  cli.run(main, flag_example='--output=DIR')
