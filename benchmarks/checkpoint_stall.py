"""How long one checkpoint save blocks the training thread, against the save's total time.

    python -m benchmarks.checkpoint_stall [--config=bijective_released] [--repeats=2]

The config's train state (random normal values, so that compression does what it does on
a real state) on one device, saved as the training loop saves. blocked: seconds until
`save` returns (the training thread's stall); total: until the checkpoint is committed.
RESULTS.md compares the previous save (this file before issue 19 has it).
"""
import argparse
import os
import tempfile
import time

import jax
import numpy as np

from benchmarks import common, tables
from irevnet_jax.run import checkpoints
from irevnet_jax.train import state as state_lib


def device_state(name: str):
  """(backend, train state on one device, bytes) for experiments/configs/<name>.py."""
  _, prog = common.runner_program(common.experiment_config(name, batch_size=8))
  rng = np.random.default_rng(0)
  host = jax.tree_util.tree_map(
      lambda a: rng.standard_normal(a.shape, np.float32).astype(a.dtype)
      if a.dtype.kind == 'f' else a,
      state_lib.host_zeros(prog.state_shapes))
  nbytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(host))
  state = prog.backend.put_state(host)
  jax.block_until_ready(state)
  return prog.backend, state, nbytes


def save(directory, step, backend, state):
  """The training loop's save into a fresh `directory`: (blocked, total) seconds."""
  checkpointer = checkpoints.Checkpointer(directory, keep=1)
  start = time.perf_counter()
  checkpointer.save(step, backend.to_host(state))
  blocked = time.perf_counter() - start
  checkpointer.wait()
  checkpointer.close()
  return blocked, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='bijective_released')
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--markdown', action='store_true', help='print a Markdown table')
  parser.add_argument('--directory', default=None, help='where to write (default: a temp dir)')
  args = parser.parse_args()
  backend, state, nbytes = device_state(args.config)
  rows = []
  for repeat in range(1, args.repeats + 1):
    with tempfile.TemporaryDirectory(prefix='checkpoint_stall_', dir=args.directory) as root:
      blocked, total = save(os.path.join(root, 'run'), repeat, backend, state)
    rows.append({'save': 'now', 'repeat': repeat, 'blocked': blocked, 'total': total,
                 'ratio': 100 * blocked / total})
  print(f'{args.config}: train state {nbytes / 1e9:.2f} GB on {common.device_name()}, '
        f'load average {os.getloadavg()[0]:.1f}')
  print(tables.format_table(rows, [('save', 'save', ''), ('repeat', 'repeat', 'd'),
                                   ('blocked', 'blocked s', '.3f'), ('total', 'total s', '.2f'),
                                   ('ratio', 'blocked / total %', '.1f')],
                            markdown=args.markdown))


if __name__ == '__main__':
  main()
