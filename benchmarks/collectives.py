"""Collective bytes per device per step of the runner's train step, read from its lowered HLO.

    python -m benchmarks.collectives                       # N = 4, 6, 8 CPU devices
    python -m benchmarks.collectives --devices=4,16 --blocks=1,2,4,1

For each device count N (one subprocess each: XLA reads the device count at start) the
real train step of `bijective_released` (experiments/configs, pmap, synchronised BN; at
a 32x32 input, which changes no parameter shape) is lowered, not run, with
`ordered_reductions` True and False, and its collectives are read from the HLO.

Bytes per device are what each device sends under bandwidth-optimal algorithms, for S
the bytes of the op's (largest) buffer: all-reduce 2 (N - 1) / N * S (ring or reduce-
scatter + all-gather), all-gather and all-to-all (N - 1) / N * S, reduce-scatter
(N - 1) / N * S of its input, collective-permute S per sending device. Ops inside
loops would count once: CPU lowers the block scans unrolled.
"""
import argparse
import json
import os
import re
import subprocess
import sys

KINDS = ('all-reduce', 'all-gather', 'all-to-all', 'collective-permute', 'reduce-scatter')
_OP = re.compile(r'^\s*\S+ = (?P<shape>\(.*?\)|\S+) (?P<kind>' + '|'.join(KINDS) +
                 r')\((?P<rest>.*)$')
_ARRAY = re.compile(r'\b(pred|[a-z]+\d+)\[([\d,]*)\]')
_ITEMSIZE = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2,
             'f32': 4, 's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8}


def _nbytes(shape_text):
  total = 0
  for dtype, dims in _ARRAY.findall(shape_text):
    count = 1
    for d in filter(None, dims.split(',')):
      count *= int(d)
    total += count * _ITEMSIZE[dtype]
  return total


def _group_size(rest, num_devices):
  groups = re.search(r'replica_groups=\{\{([\d,]*)\}', rest)
  if groups:
    return len(groups.group(1).split(','))
  iota = re.search(r'replica_groups=\[\d+,(\d+)\]', rest)
  return int(iota.group(1)) if iota else num_devices


def collective_ops(hlo_text, num_devices):
  """[(kind, bytes sent per device, op_name)] of the collectives in HLO text (debug_info
  for op names)."""
  ops = []
  for line in hlo_text.splitlines():
    match = _OP.match(line)
    if not match:
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
  """{'count', 'bytes', 'scope_count', 'scope_bytes', 'kinds'} of the collectives; scope_*:
  those whose op name holds `scope` (the train step's gradient and metric means)."""
  ops = collective_ops(hlo_text, num_devices)
  inside = [op for op in ops if scope in op[2]]
  kinds = {}
  for kind, _, _ in ops:
    kinds[kind] = kinds.get(kind, 0) + 1
  return {'count': len(ops), 'bytes': sum(op[1] for op in ops), 'scope_count': len(inside),
          'scope_bytes': sum(op[1] for op in inside), 'kinds': kinds}


def train_step_hlo(ordered, blocks=(1, 1, 1, 1), input_size=32, per_device_batch=2):
  """HLO text (with op names) of the runner's bijective_released train step on all local
  devices, lowered from shapes; the number of parameter leaves as well."""
  import jax
  import jax.numpy as jnp
  from experiments.configs import bijective_released
  from irevnet_jax import input_pipeline
  from irevnet_jax.train import program, state as state_lib, steps

  n = jax.local_device_count()
  config = bijective_released.get_config()
  config.model.input_shape = (input_size, input_size, 3)
  config.model.blocks = tuple(blocks)
  config.dataset.name = 'synthetic'
  config.batch_size = per_device_batch * n
  config.ordered_reductions = ordered
  source = input_pipeline.get_source(config.dataset, tuple(config.model.input_shape))
  normalization = steps.Normalization(source.pixel_mean, source.pixel_std)
  prog = program.build_program(config, source.num_train_examples, normalization,
                               jax.local_devices())
  host_state = state_lib.create_state(prog.train_net, prog.tx, 0, abstract=True)
  per_device = lambda x: jax.ShapeDtypeStruct((n, *x.shape), x.dtype)
  state = jax.tree_util.tree_map(per_device, host_state)
  batch = {'image': jax.ShapeDtypeStruct((n, per_device_batch, input_size, input_size, 3),
                                         jnp.uint8),
           'label': jax.ShapeDtypeStruct((n, per_device_batch), jnp.int32)}
  text = prog.train_step.lower(state, batch).as_text(dialect='hlo', debug_info=True)
  return text, len(jax.tree_util.tree_leaves(host_state['params']))


def measure(blocks=(1, 1, 1, 1)):
  """{'ordered': summary, 'native': summary, 'leaves': int} on this process's devices."""
  import jax
  n = jax.local_device_count()
  row = {'devices': n, 'blocks': list(blocks)}
  for name, ordered in (('ordered', True), ('native', False)):
    text, row['leaves'] = train_step_hlo(ordered, blocks)
    row[name] = summary(text, n)
  return row


class _Subprocess:
  """`measure` running in a subprocess with its own number of CPU devices."""

  def __init__(self, num_devices, blocks):
    env = dict(os.environ)
    flags = [f for f in env.get('XLA_FLAGS', '').split()
             if not f.startswith('--xla_force_host_platform_device_count')]
    env['XLA_FLAGS'] = ' '.join(
        flags + [f'--xla_force_host_platform_device_count={num_devices}'])
    env['JAX_PLATFORMS'] = 'cpu'
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env['PYTHONPATH'] = os.pathsep.join(p for p in (os.environ.get('PYTHONPATH'), repo) if p)
    self.args = [sys.executable, os.path.abspath(__file__), '--json',
                 '--blocks=' + ','.join(map(str, blocks))]
    self.process = subprocess.Popen(self.args, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)

  def result(self, timeout=600):
    out, err = self.process.communicate(timeout=timeout)
    if self.process.returncode:
      raise RuntimeError(f'{self.args} failed:\n{err[-3000:]}')
    return json.loads(out.strip().splitlines()[-1])

  def __enter__(self):
    return self

  def __exit__(self, *_):
    if self.process.poll() is None:
      self.process.kill()
      self.process.communicate()


def start_with_devices(num_devices, blocks=(1, 1, 1, 1)):
  """Starts `measure` in a subprocess with `num_devices` CPU devices (XLA reads the count
  at start); a context manager whose `result()` is the row."""
  return _Subprocess(num_devices, blocks)


def table(rows):
  lines = ['| N | leaves | mode | collectives | in gradient_mean | MB / device / step | '
           'vs native |', '|---|---|---|---|---|---|---|']
  for row in rows:
    native = row['native']['bytes']
    for mode in ('ordered', 'native'):
      s = row[mode]
      lines.append(f"| {row['devices']} | {row['leaves']} | {mode} | {s['count']} | "
                   f"{s['scope_count']} | {s['bytes'] / 2**20:.2f} | "
                   f"{s['bytes'] / native:.3f}x |")
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--devices', default='4,6,8')
  parser.add_argument('--blocks', default='1,1,1,1')
  parser.add_argument('--json', action='store_true', help='measure here, print one JSON row')
  args = parser.parse_args()
  blocks = tuple(int(b) for b in args.blocks.split(','))
  if args.json:
    print(json.dumps(measure(blocks)))
    return
  runs = [start_with_devices(int(n), blocks) for n in args.devices.split(',')]
  rows = []
  for run in runs:
    with run:
      rows.append(run.result())
  print(f'bijective_released train step, blocks {blocks}, 32x32 input, lowered HLO')
  print(table(rows))


if __name__ == '__main__':
  main()
