"""What F's fused BN-ReLU-convolution kernel (`model.fused_kernel='pallas'`) saves in memory.

    python -m benchmarks.pallas_conv                  # bijective_released, batch 8
    python -m benchmarks.pallas_conv --model=cifar10 --markdown

Per stage, the activations that autodiff of the whole network keeps per alike block in
bfloat16 training (`bn_relu.scan_row`: the rolled block scan's residuals, from shapes with
`jax.eval_shape`; nothing is compiled or run), with fused_kernel 'none' (XLA: BN-ReLU then
the convolution, which keeps its input, the activation) and 'pallas' (model/pallas_conv.py:
the kernel's backward keeps BN's input x, per-channel numbers and the kernel, and recomputes
the activation). Both train with the fused BN-ReLU's lean backward (`model.fused_bn_relu`).

No speed and no bytes accessed here: on CPU the kernel runs in Pallas's interpreter, whose
program says nothing of a GPU's; the GPU's number is `benchmarks/gpu_options.py`'s row
'pallas kernel' (`bash benchmarks/gpu.sh --options`).
"""
import argparse

import jax

from benchmarks import bn_relu, common, tables

KINDS = ('none', 'pallas')
COLUMNS = [('what', 'what', ''), ('kernel', 'fused_kernel', ''), ('batch', 'batch', 'd'),
           ('saved_mb_img', 'saved activations MB/img', '.3f'),
           ('saved_b_value', 'B per value of u', '.2f'), ('saved_x', 'pallas/none', '.3f')]


def rows_of(model: str, stages, batch: int):
  """One row per (stage, fused_kernel); 'pallas' rows get pallas/none."""
  model_config = common.experiment_config(model, batch_size=batch).model
  rows = []
  for stage in stages:
    none, pallas = (dict(bn_relu.scan_row(model_config, stage, batch, True,
                                          model_fields={'fused_kernel': kind}), kernel=kind)
                    for kind in KINDS)
    pallas['saved_x'] = pallas['saved_mb_img'] / none['saved_mb_img']
    rows += [none, pallas]
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='bijective_released', help='in experiments/configs/')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--stages', default='0,1,2,3')
  parser.add_argument('--markdown', action='store_true')
  args = parser.parse_args(argv)
  rows = rows_of(args.model, [int(s) for s in args.stages.split(',')], args.batch)
  print(f'{args.model}, bfloat16 training, autodiff (rolled scan), {common.device_name()}, '
        f'jax {jax.__version__}')
  print(tables.format_table(rows, COLUMNS, markdown=args.markdown))


if __name__ == '__main__':
  main()
