"""Inversion error ||invert(forward(x)) - x|| / ||x|| per model and numeric setting.

    python -m benchmarks.inversion                                 # cifar10, on this machine
    python -m benchmarks.inversion --models=cifar10,bijective_released --batch=8

Settings: float32 at 'default' precision (TF32-like on NVIDIA GPUs) or 'highest' (exact
inversion), bfloat16 both ways, and 'bfloat16>float32/highest': z from training's bfloat16
forward inverted by the exact float32 net of evaluation and `invert`. Eval mode, freshly
initialised variables, x uniform in [0, 1).
"""
import argparse
import time

import jax
import numpy as np

from benchmarks import common, tables
from irevnet_jax import nets

SETTINGS = {   # name -> ((dtype, precision) of the forward, (dtype, precision) of invert)
    'float32/default': (('float32', 'default'), ('float32', 'default')),
    'float32/highest': (('float32', 'highest'), ('float32', 'highest')),
    'bfloat16': (('bfloat16', 'default'), ('bfloat16', 'default')),
    'bfloat16>float32/highest': (('bfloat16', 'default'), ('float32', 'highest')),
}


def _net(model_config, dtype, precision):
  c = model_config.copy_and_resolve_references()
  c.update(dtype=dtype, precision=precision)
  return nets.build(c)


def measure(model: str, batch: int, settings=tuple(SETTINGS), smoke=False, report=print):
  """Rows {model, setting, rel_error, max_abs_error, z dtype, seconds}, one per setting."""
  rows, variables = [], None
  base = common.experiment_config(model, batch_size=batch, smoke=smoke).model
  for setting in settings:
    net, inv_net = (_net(base, dtype, precision) for dtype, precision in SETTINGS[setting])
    x, _ = common.synthetic_batch(net, batch)
    if variables is None:   # the parameter tree (float32) is the same for every setting
      variables = jax.jit(net.init)(jax.random.PRNGKey(0), x[:1])

    def roundtrip(variables, x, net=net, inv_net=inv_net):
      _, z = net.forward(variables, x)
      return inv_net.invert(variables, z), z

    start = time.perf_counter()
    x_again, z = jax.jit(roundtrip)(variables, x)
    x_again, x64 = np.asarray(x_again, np.float64), np.asarray(x, np.float64)
    seconds = time.perf_counter() - start
    row = {'model': model, 'setting': setting, 'batch': batch,
           'rel_error': float(np.linalg.norm(x_again - x64) / np.linalg.norm(x64)),
           'max_abs_error': float(np.max(np.abs(x_again - x64))),
           'z_dtype': str(z.dtype), 'seconds': seconds}
    rows.append(row)
    report(f'  {model} {setting}: relative error {row["rel_error"]:.2e}')
  return rows


COLUMNS = [('model', 'model', ''), ('setting', 'setting', ''), ('batch', 'batch', 'd'),
           ('z_dtype', 'z dtype', ''), ('rel_error', 'rel. error', '.2e'),
           ('max_abs_error', 'max abs error', '.2e'), ('seconds', 'compile+run s', '.1f')]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='cifar10')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--settings', default=','.join(SETTINGS))
  parser.add_argument('--smoke', action='store_true', help='shrunken models (CPU check)')
  args = parser.parse_args()
  print(f'inversion error on {common.device_name()}, jax {jax.__version__}')
  rows = []
  for model in args.models.split(','):
    rows += measure(model, args.batch, args.settings.split(','), args.smoke)
  print(tables.format_table(rows, COLUMNS))


if __name__ == '__main__':
  main()
