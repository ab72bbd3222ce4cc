"""`python -m experiments.main` with a built-in interruption, for the kill / resume tests.

    python tests/train_helper.py --kill_at_step=6 --wait_for_checkpoint=4 --kill_signal=KILL \
        --workdir=... --config.num_train_steps=12 ...

All flags of experiments.main work. When the training loop asks for the batch
of step `kill_at_step` (steps done so far), the process waits until checkpoint
`wait_for_checkpoint` is on disk, then sends itself `kill_signal` (KILL: dies
at once; TERM: the runner saves after the current step and exits with 143).
`--signal_supervisor`: send it to the parent instead (experiments/supervisor.py of a
multi-process run, which forwards it here). `--kill_at_eval_batch=k` sends `kill_signal`
when the first evaluation asks for its batch k instead. `--wait_for_file=PATH`: before
interrupting, also wait until PATH exists (a test's signal that it has done what it needed
while this run is alive).
`--kill_during_save=S`: the commit of checkpoint S is held in Orbax's commit thread (its
checksums are never written, so it never commits) and the process SIGKILLs itself when the
loop starts its next save: the records logged after S started saving exist, S does not.
The workdir may be a URL (gs://...). `--file_size_limit=N` makes every file write beyond N bytes
fail with EFBIG (a full disk, for checkpoints).
TensorFlow cannot be imported here: the runs also show that training on digits
does not need it.
"""
import os
import resource
import signal
import sys
import threading
import time

sys.modules['tensorflow'] = None   # any `import tensorflow` now raises ImportError

from experiments import supervisor

if __name__ == '__main__':
  supervisor.supervise_if_distributed()   # as experiments.main: the interruptions in the child

from absl import flags
from etils import epath
import orbax.checkpoint as ocp

from experiments import cli
from experiments import main as experiment_main
from irevnet_jax.run import checkpoints, checksums
from irevnet_jax.data import input_pipeline

flags.DEFINE_integer('kill_at_step', -1, 'Interrupt when the batch of this step is requested.')
flags.DEFINE_integer('wait_for_checkpoint', -1, 'Checkpoint step to wait for before that.')
flags.DEFINE_bool('signal_supervisor', False, 'Send kill_signal to the supervising parent.')
flags.DEFINE_integer('kill_at_eval_batch', -1, 'Interrupt when this eval batch is requested.')
flags.DEFINE_string('wait_for_file', '', 'File to wait for before interrupting.')
flags.DEFINE_enum('kill_signal', 'KILL', ['KILL', 'TERM', 'INT'], 'Signal to send to this process.')
flags.DEFINE_integer('file_size_limit', -1, 'Largest file this process may write (RLIMIT_FSIZE).')
flags.DEFINE_integer('kill_during_save', -1, 'Hold the commit of this checkpoint; SIGKILL at the '
                     'next save.')
FLAGS = flags.FLAGS


def _interrupting(batches, start_step):
  for step, batch in enumerate(batches, start=start_step):
    if step == FLAGS.kill_at_step:
      if FLAGS.wait_for_checkpoint >= 0:
        path = epath.Path(FLAGS.workdir, checkpoints.CHECKPOINT_DIR,
                          str(FLAGS.wait_for_checkpoint))
        deadline = time.time() + 120
        while time.time() < deadline and not (
            path.is_dir() and ocp.path.step.is_checkpoint_finalized(path)):
          time.sleep(0.05)
      deadline = time.time() + 120
      while FLAGS.wait_for_file and not os.path.exists(FLAGS.wait_for_file):
        if time.time() > deadline:
          break
        time.sleep(0.05)
      target = os.getppid() if FLAGS.signal_supervisor else os.getpid()
      assert not FLAGS.signal_supervisor or os.environ.get(supervisor.CHILD_MARKER)
      os.kill(target, getattr(signal, 'SIG' + FLAGS.kill_signal))
    yield batch


def _patch_sources():
  get_source = input_pipeline.get_source

  def patched(*args, **kwargs):
    source = get_source(*args, **kwargs)
    train_batches = source.train_batches

    def interrupted(local_batch_size, process_index, process_count, seed, start_step):
      return _interrupting(train_batches(local_batch_size, process_index, process_count,
                                         seed, start_step), start_step)
    source.train_batches = interrupted
    eval_batches = source.eval_batches

    def interrupted_eval(*args):
      for index, batch in enumerate(eval_batches(*args)):
        if index == FLAGS.kill_at_eval_batch:
          FLAGS.kill_at_eval_batch = -1   # the first evaluation only
          os.kill(os.getpid(), getattr(signal, 'SIG' + FLAGS.kill_signal))
        yield batch
    source.eval_batches = interrupted_eval
    return source

  input_pipeline.get_source = patched


def _kill_during_save(held_step):
  """Holds checkpoint `held_step` in its commit thread; SIGKILL when a later save starts."""
  write_checksums, save = checksums.Handler._write, checkpoints.Checkpointer.save

  def held(handler, directory, state):
    if int(directory.parent.name.split('.')[0]) == held_step:   # <step>[.orbax-...-tmp-...]
      threading.Event().wait()    # until the process dies
    write_checksums(handler, directory, state)

  def killing(checkpointer, step, *args, **kwargs):
    if step > held_step:
      os.kill(os.getpid(), signal.SIGKILL)
    return save(checkpointer, step, *args, **kwargs)
  checksums.Handler._write = held
  checkpoints.Checkpointer.save = killing


def main(argv):
  if FLAGS.file_size_limit >= 0:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (FLAGS.file_size_limit, FLAGS.file_size_limit))
  _patch_sources()
  if FLAGS.kill_during_save >= 0:
    _kill_during_save(FLAGS.kill_during_save)
  experiment_main.main(argv)


if __name__ == '__main__':
  cli.run(main)
