"""Collective bytes per device per step of the runner's train step, read from its lowered HLO.

    python -m benchmarks.collectives                 # N = 4, 6, 8 CPU devices
    python -m benchmarks.collectives --devices=4,16 --blocks=1,2,4,1
    python -m benchmarks.collectives --estimate      # full-size models, N = 8 ... 1024

For each device count N (a pmap over N CPU devices of a subprocess: the program of a
process with N) the runner's train step of `bijective_released` (at a 32x32 input, which
changes no parameter shape) is lowered, not run, with `ordered_reductions` True and False.
Bytes per device: what each sends under bandwidth-optimal algorithms, for S the bytes of
the op's (largest) buffer: all-reduce 2 (N - 1) / N * S, all-gather and all-to-all
(N - 1) / N * S, reduce-scatter (N - 1) / N * S of its input, collective-permute S per
sender. Ops inside loops would count once: CPU lowers the block scans unrolled.
"""
import argparse
import collections
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from irevnet_jax import nets
from irevnet_jax.model import collectives as model_collectives, presets

KINDS = ('all-reduce', 'all-gather', 'all-to-all', 'collective-permute', 'reduce-scatter')
_OP = re.compile(r'^\s*\S+ = (?P<shape>\(.*?\)|\S+) (?P<kind>' + '|'.join(KINDS) +
                 r')\((?P<rest>.*)$')
_ARRAY = re.compile(r'\b(pred|[a-z]+\d+)\[([\d,]*)\]')
_ITEMSIZE = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2,
             'f32': 4, 's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8}


def _nbytes(shape_text):
  return sum(math.prod(int(d) for d in dims.split(',') if d) * _ITEMSIZE[dtype]
             for dtype, dims in _ARRAY.findall(shape_text))


def _group_size(rest, num_devices):
  groups = re.search(r'replica_groups=\{\{([\d,]*)\}', rest)
  if groups:
    return len(groups.group(1).split(','))
  iota = re.search(r'replica_groups=\[\d+,(\d+)\]', rest)
  return int(iota.group(1)) if iota else num_devices


def collective_ops(hlo_text, num_devices):
  """[(kind, bytes sent per device, op_name)] of the collectives in HLO text."""
  ops = []
  for line in hlo_text.splitlines():
    if not (match := _OP.match(line)):
      continue
    kind, rest, size = match['kind'], match['rest'], _nbytes(match['shape'])
    n = _group_size(rest, num_devices)
    if kind == 'all-reduce':
      sent = 2 * (n - 1) / n * size
    elif kind == 'reduce-scatter':
      sent = (n - 1) * size
    elif kind == 'collective-permute':
      pairs = re.search(r'source_target_pairs=\{(.*?)\}\}', rest)
      senders = pairs.group(1).count('{') if pairs else num_devices
      sent = size * senders / num_devices
    else:
      sent = (n - 1) / n * size
    name = re.search(r'op_name="([^"]*)"', rest)
    ops.append((kind, sent, name.group(1) if name else ''))
  return ops


def summary(hlo_text, num_devices, scope='gradient_mean'):
  """{'count', 'bytes', 'scope_count', 'scope_bytes', 'kinds'}; scope_*: ops named `scope`."""
  ops = collective_ops(hlo_text, num_devices)
  inside = [op for op in ops if scope in op[2]]
  kinds = collections.Counter(kind for kind, _, _ in ops)
  return {'count': len(ops), 'bytes': sum(op[1] for op in ops), 'scope_count': len(inside),
          'scope_bytes': sum(op[1] for op in inside), 'kinds': dict(kinds)}


def train_step_hlo(ordered, num_devices, blocks=(1, 1, 1, 1), input_size=32,
                   per_device_batch=2):
  """(HLO text with op names, parameter leaves) of the runner's bijective_released train
  step on the first `num_devices` local devices, lowered from shapes."""
  n = num_devices
  config = common.experiment_config('bijective_released', batch_size=per_device_batch * n,
                                    blocks=blocks)
  config.model.input_shape = (input_size, input_size, 3)
  config.ordered_reductions = ordered
  _, prog = common.runner_program(config, n)
  per_device = lambda x: jax.ShapeDtypeStruct((n, *x.shape), x.dtype)
  state = jax.tree_util.tree_map(per_device, prog.state_shapes)
  batch = {'image': jax.ShapeDtypeStruct((n, per_device_batch, input_size, input_size, 3),
                                         jnp.uint8),
           'label': jax.ShapeDtypeStruct((n, per_device_batch), jnp.int32)}
  text = prog.train_step.lower(state, batch).as_text(dialect='hlo', debug_info=True)
  return text, len(jax.tree_util.tree_leaves(prog.state_shapes['params']))


def measure(num_devices, blocks=(1, 1, 1, 1)):
  """{'ordered': summary, 'native': summary, 'leaves', 'devices', 'blocks'} of the train
  step on the first `num_devices` local devices (the program of a process with N)."""
  row = {'devices': num_devices, 'blocks': list(blocks)}
  for name, ordered in (('ordered', True), ('native', False)):
    text, row['leaves'] = train_step_hlo(ordered, num_devices, blocks)
    row[name] = summary(text, num_devices)
  return row


@contextlib.contextmanager
def start(counts, blocks=(1, 1, 1, 1)):
  """`measure` of each device count in `counts`, in a subprocess with max(counts) CPU
  devices (XLA reads the count at start): `with start(counts) as run: rows = run.result()`."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = ' '.join([f for f in env.get('XLA_FLAGS', '').split()
                               if not f.startswith('--xla_force_host_platform_device_count')]
                              + [f'--xla_force_host_platform_device_count={max(counts)}'])
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = os.pathsep.join(p for p in (os.environ.get('PYTHONPATH'), repo) if p)
  args = [sys.executable, os.path.abspath(__file__), '--json',
          '--devices=' + ','.join(map(str, counts)), '--blocks=' + ','.join(map(str, blocks))]
  process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)

  def result(timeout=600):
    out, err = process.communicate(timeout=timeout)
    if process.returncode:
      raise RuntimeError(f'{args} failed:\n{err[-3000:]}')
    return json.loads(out.strip().splitlines()[-1])

  try:
    yield types.SimpleNamespace(result=result)
  finally:
    if process.poll() is None:
      process.kill()
      process.communicate()


def full_model_estimate(name, counts=(8, 64, 256, 1024)):
  """Rows for the full-size preset `name` (autodiff backprop), by the cost model above:
  gradients (float32, one buffer) and one BN collective per layer and pass (forward,
  backward), ordered (BN: one all_gather while 8 C bytes <= GATHER_BYTES) vs native."""
  net = nets.build(getattr(presets, name)())
  x = jax.ShapeDtypeStruct((1, *net.input_shape), np.float32)
  variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
  params = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables['params']))
  bn = [v.shape for v in jax.tree_util.tree_leaves(variables['batch_stats'])][::2]
  layers = [(int(np.prod(s[:-1])), s[-1]) for s in bn]      # (layers stacked, channels)
  rows = []
  for n in counts:
    reduce_bytes = lambda b: 2 * (n - 1) / n * b
    grads = reduce_bytes(4 * params)
    native_bn = sum(2 * k * reduce_bytes(8 * c) for k, c in layers)
    ordered_bn = sum(2 * k * ((n - 1) * 8 * c if 8 * c <= model_collectives.GATHER_BYTES
                              else reduce_bytes(8 * c)) for k, c in layers)
    rows.append((name, n, grads, native_bn, ordered_bn))
  return rows


def estimate_table(names=('bijective', 'bijective_released', 'injective')):
  lines = ['| model | N | gradients MB | BN native MB | BN ordered MB | ordered / native |',
           '|---|---|---|---|---|---|']
  for name in names:
    for model, n, grads, native_bn, ordered_bn in full_model_estimate(name):
      ratio = (grads + ordered_bn) / (grads + native_bn)
      lines.append(f'| {model} | {n} | {grads / 2**20:.0f} | {native_bn / 2**20:.1f} | '
                   f'{ordered_bn / 2**20:.1f} | {ratio:.3f}x |')
  return '\n'.join(lines)


def table(rows):
  lines = ['| N | leaves | mode | collectives | in gradient_mean | MB / device / step | '
           'vs native |', '|---|---|---|---|---|---|---|']
  lines += [f"| {row['devices']} | {row['leaves']} | {mode} | {row[mode]['count']} | "
            f"{row[mode]['scope_count']} | {row[mode]['bytes'] / 2**20:.2f} | "
            f"{row[mode]['bytes'] / row['native']['bytes']:.3f}x |"
            for row in rows for mode in ('ordered', 'native')]
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--devices', default='4,6,8', help='device counts N')
  parser.add_argument('--blocks', default='1,1,1,1')
  parser.add_argument('--json', action='store_true', help='measure here, print JSON rows')
  parser.add_argument('--estimate', action='store_true',
                      help='full-size ImageNet presets by the cost model, no lowering')
  args = parser.parse_args()
  if args.estimate:
    print('Full-size models, collective bytes per device per step (cost model; autodiff)')
    print(estimate_table())
    return
  blocks = tuple(int(b) for b in args.blocks.split(','))
  counts = [int(n) for n in args.devices.split(',')]
  if args.json:
    print(json.dumps([measure(n, blocks) for n in counts]))
    return
  with start(counts, blocks) as run:
    rows = run.result()
  print(f'bijective_released train step, blocks {blocks}, 32x32 input, lowered HLO')
  print(table(rows))


if __name__ == '__main__':
  main()
