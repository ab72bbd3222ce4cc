"""How long one checkpoint save blocks the training thread, against the save's total time.

    python -m benchmarks.checkpoint_stall [--config=bijective_released] [--repeats=2]

The train state of the config (float32 parameters + SGD momentum, random normal
values so that compression does what it does on a real state) lives on one device
through the runner's back end; each save is the training loop's:
`checkpointer.save(step, backend.to_host(state))`, then `wait()`.
`blocked`: seconds until `save` returns (the training thread's stall); `total`: until
the checkpoint is committed on disk. Rows alternate with `before`: the previous
mechanism (Orbax's StandardSave, which deep-copies the numpy arrays, and the CRC-32s
computed on the calling thread), so that machine load affects both alike.
"""
import argparse
import os
import shutil
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from benchmarks import common
from irevnet_jax.run import checkpoints
from irevnet_jax.data import input_pipeline
from irevnet_jax.train import program as program_lib, state as state_lib, steps as steps_lib


def device_state(name: str):
  """(backend, train state on one device, bytes) for experiments/configs/<name>.py."""
  config = common.experiment_config(name, batch_size=8)
  source = input_pipeline.get_source(config.dataset, tuple(config.model.input_shape))
  normalization = steps_lib.Normalization(source.pixel_mean, source.pixel_std)
  prog = program_lib.build_program(config, source.num_train_examples, normalization,
                                   jax.local_devices()[:1])
  rng = np.random.default_rng(0)
  host = jax.tree_util.tree_map(
      lambda a: rng.standard_normal(a.shape, np.float32).astype(a.dtype)
      if a.dtype.kind == 'f' else a,
      state_lib.create_state(prog.train_net, prog.tx, 0, abstract=True))
  nbytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(host))
  state = prog.backend.put_state(host)
  jax.block_until_ready(state)
  return prog.backend, state, nbytes


def save_now(directory, step, backend, state):
  """The training loop's save: (blocked, total) seconds."""
  checkpointer = checkpoints.Checkpointer(directory, keep=1)
  start = time.perf_counter()
  checkpointer.save(step, backend.to_host(state))
  blocked = time.perf_counter() - start
  checkpointer.wait()
  total = time.perf_counter() - start
  checkpointer.close()
  return blocked, total


def save_before(directory, step, backend, state):
  """The previous save: StandardSave (deep copy) + CRC-32s on the calling thread."""
  manager = ocp.CheckpointManager(
      os.path.join(directory, checkpoints.CHECKPOINT_DIR), item_names=('default', 'checksums'),
      options=ocp.CheckpointManagerOptions(max_to_keep=1))
  start = time.perf_counter()
  host = backend.to_host(state)
  manager.save(step, args=ocp.args.Composite(
      default=ocp.args.StandardSave(host),
      checksums=ocp.args.JsonSave(checkpoints.checksums(host))))
  blocked = time.perf_counter() - start
  manager.wait_until_finished()
  total = time.perf_counter() - start
  manager.close()
  return blocked, total


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='bijective_released')
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--markdown', action='store_true', help='print a Markdown table')
  parser.add_argument('--directory', default=None, help='where to write (default: a temp dir)')
  args = parser.parse_args()
  backend, state, nbytes = device_state(args.config)
  root = tempfile.mkdtemp(prefix='checkpoint_stall_', dir=args.directory)
  rows = []
  try:
    for repeat in range(args.repeats):
      for name, save in (('before', save_before), ('now', save_now)):
        directory = os.path.join(root, name)
        blocked, total = save(directory, repeat + 1, backend, state)
        rows.append({'save': name, 'repeat': repeat + 1, 'blocked': blocked, 'total': total,
                     'ratio': 100 * blocked / total})
        shutil.rmtree(directory)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  print(f'{args.config}: train state {nbytes / 1e9:.2f} GB on {common.device_name()}, '
        f'load average {os.getloadavg()[0]:.1f}')
  print(common.format_table(rows, [('save', 'save', ''), ('repeat', 'repeat', 'd'),
                                   ('blocked', 'blocked s', '.3f'), ('total', 'total s', '.2f'),
                                   ('ratio', 'blocked / total %', '.1f')],
                            markdown=args.markdown))


if __name__ == '__main__':
  main()
