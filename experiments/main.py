"""Trains and evaluates an i-RevNet from a config file.

    python -m experiments.main --workdir=runs/digits
    python -m experiments.main --config=experiments/configs/cifar10.py --config.batch_size=64

Rerunning the same command resumes from the latest checkpoint in --workdir.
Multi-host: pass --coordinator_address, --num_processes and --process_id to
every process, or --distributed to let JAX detect them (TPU pods, SLURM).
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from irevnet_jax import metrics, train

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'digits.py')

config_flags.DEFINE_config_file('config', DEFAULT_CONFIG, 'Experiment config file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<config name>).')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() with auto-detection (TPU pods, SLURM).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process).')
flags.DEFINE_integer('process_id', None, 'Index of this process (multi-process).')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.distributed or FLAGS.coordinator_address:
    try:  # CPU devices of several processes talk through gloo (the default in recent JAX)
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    except (AttributeError, KeyError, ValueError):
      pass
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  metrics.quiet_library_logs()
  config_name = os.path.splitext(os.path.basename(FLAGS['config'].config_filename))[0]
  workdir = FLAGS.workdir or os.path.join('runs', config_name)
  try:
    train.train_and_evaluate(FLAGS.config, workdir)
  except train.Preempted as preempted:
    logging.warning('%s', preempted)
    sys.exit(preempted.exit_code)   # 143 (SIGTERM) or 130 (Ctrl-C): an interrupted job


if __name__ == '__main__':
  app.run(main)
