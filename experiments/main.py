"""Trains and evaluates an i-RevNet from a config file.

    python -m experiments.main --workdir=runs/digits
    python -m experiments.main --config=experiments/configs/cifar10.py --config.batch_size=64

Rerunning the same command resumes from the latest checkpoint in --workdir; a
resume with changed training fields is refused unless --allow_config_change.
Multi-host: pass --coordinator_address, --num_processes and --process_id to
every process, or --distributed to let JAX detect them (TPU pods, SLURM).
If one process stops (killed, or an error), the others end within
$IREVNET_PEER_TIMEOUT_SECONDS (default 60), each with one line naming it; if
process 0 dies, the others end at once, each with one line naming process 0
(each process runs as a child of experiments/supervisor.py, which turns JAX's
C++ abort into that line; signals are forwarded, exit statuses passed through).
Errors in your input end in one line (`--verbose` shows the traceback).
"""
import os

from experiments import supervisor

if __name__ == '__main__':
  supervisor.supervise_if_distributed()   # several processes: runs this in a child, no jax here

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from absl import logging
import jax

from experiments import cli
from irevnet_jax import train
from irevnet_jax.train import peers

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), 'configs', 'digits.py')

cli.define_config_flag('config', DEFAULT_CONFIG, 'Experiment config file.')
flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<config name>).')
flags.DEFINE_bool('allow_config_change', False,
                  'Resume even though training fields differ from the run\'s config.json '
                  '(the old config is kept in config_history.jsonl).')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() with auto-detection (TPU pods, SLURM).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process).')
flags.DEFINE_integer('process_id', None, 'Index of this process (multi-process).')
FLAGS = flags.FLAGS


def main(argv):
  del argv  # checked by cli.run
  if FLAGS.distributed or FLAGS.coordinator_address:
    try:  # CPU devices of several processes talk through gloo (the default in recent JAX)
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    except (AttributeError, KeyError, ValueError):
      pass
    # JAX's own detection of a stopped process aborts the others with a C++ stack trace;
    # train.peers ends them first, in one line.
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id,
                               heartbeat_timeout_seconds=peers.jax_heartbeat_timeout_seconds())
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  config_name = os.path.splitext(os.path.basename(FLAGS['config'].config_filename))[0]
  workdir = FLAGS.workdir or os.path.join('runs', config_name)
  train.train_and_evaluate(FLAGS.config, workdir,
                           allow_config_change=FLAGS.allow_config_change)


if __name__ == '__main__':
  cli.run(main)
