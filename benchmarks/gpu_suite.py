"""The GPU table of benchmarks/gpu.sh: rows of `benchmarks.speed` and `.inversion` by
importance until a time budget is spent; the table; the comparison with the authors'
PyTorch code (their rows of the same run, from benchmarks/authors_torch.py's --json_out,
else anchors measured on an H200 on another day) and the 100-block compile goal.

    python -m benchmarks.gpu_suite --budget_s=390 --memory_gib=120
    python -m benchmarks.gpu_suite --authors_rows=/tmp/authors.json   # + their rows
    python -m benchmarks.gpu_suite --smoke --memory_gib=0.25 --max_batch=32   # on CPU

Inversion rows: dtype/prec. 'forward>inverse'; compile s: compile and run of forward +
invert; note: ||invert(forward(x)) - x|| / ||x|| and the largest absolute error.
"""
import argparse
import json
import os

import jax

from benchmarks import common, inversion, speed, tables

# The authors' PyTorch code on an NVIDIA H200 (torch 2.11, eager, bf16 autocast,
# channels_last, random data, SGD); reference notes §6 and issue 10.
PYTORCH_ANCHORS = {   # model: (images/s, batch, what)
    'bijective_released': (1648, 512, 'eager bf16, 46.6 GiB'),
    'cifar10': (10190, 1024, 'eager bf16; torch.compile 12,614 after a 112 s compile'),
    'resnet50': (4677, 256, 'torchvision, eager bf16'),
}
TARGET_RATIO = 2.0        # issues 10, 29: bijective_released at 2x the authors' code
COMPILE_GOAL_S = 60.0     # issue 10: the 100-block models compile in under a minute
# Training's forward with the exact inverse; the exact net both ways; TF32-like float32.
INVERSION_SETTINGS = ('bfloat16>float32/highest', 'float32/highest', 'float32/default')


PLAIN_BN_RELU = 'plain_bn_relu'   # a train item's 5th entry: model.fused_bn_relu=False
PLAIN_NOTE = 'plain BN-ReLU'      # the note of its row


def gpu_plan(smoke: bool):
  """('train', model, mode, batch[, PLAIN_BN_RELU]) | ('invert', model), most important
  first. The reversible largest-batch row goes last: on an H200 (2026-12-04) it compiled
  for 281 s. The PLAIN_BN_RELU rows time autodiff of BN then ReLU, the fused BN-ReLU's before."""
  b256, b1024 = (8, 32) if smoke else (256, 1024)
  return [('train', 'bijective_released', 'autodiff', b256),
          ('train', 'bijective_released', 'autodiff', b256, PLAIN_BN_RELU),
          ('train', 'bijective_released', 'autodiff', 'max'),
          ('train', 'bijective_released', 'reversible', b256),
          ('train', 'bijective_released', 'reversible', b256, PLAIN_BN_RELU),
          ('train', 'cifar10', 'autodiff', b1024),
          ('train', 'cifar10', 'reversible', b1024),
          ('train', 'resnet50', 'autodiff', b256),
          ('invert', 'bijective_released'),
          *[('train', m, mode, b256) for m in ('bijective', 'revnet56', 'injective')
            for mode in ('autodiff', 'reversible')],
          ('invert', 'cifar10'),
          ('train', 'bijective_released', 'reversible', 'max')]


def _guess_seconds(item, costs, smoke):
  """A plan item's expected cost: the last cost of the same model (1.5x for a 'max' row,
  which compiles once more), else a default by kind and size."""
  if item[1] in costs:
    return costs[item[1]] * (1.5 if item[-1] == 'max' else 1.0)
  return 10.0 if smoke else 60.0 if item[1].startswith(('bijective', 'injective')) else 30.0


def load_authors_rows(path: str):
  """The rows benchmarks/authors_torch.py wrote to `path` (what='authors'); [] where it
  wrote none (their run failed or was stopped before its first row)."""
  if not path or not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)['rows']


def run_suite(budget_s: float, smoke: bool, memory_gib=None, min_seconds=2.0, cap=4096,
              train_dtype='bfloat16', inversion_batch=8, authors_rows=''):
  """Runs `gpu_plan` until `budget_s` is spent (`tables.run_items`), then prints the table
  (with the authors' rows read from `authors_rows`, a path) and `summary_lines`. Returns
  the rows."""
  limit = common.device_memory_bytes(memory_gib)
  if limit is None:
    raise ValueError('this device reports no memory limit; pass --memory_gib (e.g. 2 on CPU)')
  limit = int(limit * speed.SAFETY)
  print(f"suite on {common.device_name()}, jax {jax.__version__}, the runner's train step "
        f'(pmap, one device), planning with {limit / common.GIB:.2f} GiB, budget '
        f'{budget_s:.0f} s' + (' (SMOKE: shrunken models, numbers mean nothing)' if smoke
                               else ''), flush=True)

  def make_rows(item):
    if item[0] == 'invert':
      return [{'what': 'invert', 'model': r['model'] + (' (smoke)' if smoke else ''),
               'setting': r['setting'], 'batch': r['batch'], 'compile_s': r['seconds'],
               'note': f'rel. error {r["rel_error"]:.2e} (max abs {r["max_abs_error"]:.1e})'}
              for r in inversion.measure(item[1], inversion_batch, INVERSION_SETTINGS,
                                         smoke=smoke, report=lambda _: None)]
    plain = PLAIN_BN_RELU in item
    row = speed.train_row(item[1], item[2], item[3], train_dtype=train_dtype, smoke=smoke,
                          limit_bytes=limit, cap=cap, min_seconds=min_seconds,
                          model_fields={'fused_bn_relu': False} if plain else None)
    if row and plain:
      row['note'] = '; '.join(n for n in (PLAIN_NOTE, row['note']) if n)
    return [row] if row else []

  rows = tables.run_items(gpu_plan(smoke), make_rows, budget_s,
                         lambda item, costs: _guess_seconds(item, costs, smoke))
  rows += load_authors_rows(authors_rows)
  print('\n' + tables.format_table(rows, speed.COLUMNS, markdown=True) + '\n')
  for line in summary_lines(rows, smoke, jax.devices()[0].device_kind):
    print(line)
  return rows


def summary_lines(rows, smoke: bool, card: str = ''):
  """Ours against the authors' rows of the same run (`authors_lines`), else against the
  PyTorch anchors; the batch ratios and the 100-block goal."""
  prefix = 'SMOKE, not comparable: ' if smoke else ''
  lines = authors_lines(rows, prefix, card) + bn_relu_lines(rows, prefix)
  measured = {_model(r) for r in rows if r['what'] == 'authors' and r.get('img_s')}
  train = [r for r in rows if r['what'] == 'train' and not _plain_bn_relu(r)]
  if card and ({_model(r) for r in train if r.get('img_s')} - measured) & set(PYTORCH_ANCHORS):
    lines.append(f'{prefix}card: {card}; the PyTorch anchors below were measured on an H200')
  for row in train:
    model = _model(row)
    if model in PYTORCH_ANCHORS and model not in measured and row.get('img_s'):
      anchor, anchor_batch, how = PYTORCH_ANCHORS[model]
      lines.append(
          f'{prefix}{model} {row["setting"]} {row["mode"]} batch {row["batch"]}: '
          f'{row["img_s"]:,.0f} images/s = {row["img_s"] / anchor:.2f}x PyTorch\'s {anchor:,} '
          f'(batch {anchor_batch}, H200, {how}); goal on an H200: {TARGET_RATIO:.0f}x = '
          f'{TARGET_RATIO * anchor:,.0f}')
  largest = {}   # (model, mode) -> the largest max-batch estimate of its rows
  for r in sorted((r for r in train if r.get('max_batch')), key=lambda r: r['max_batch']):
    largest[r['model'], r['mode']] = r['max_batch']
  for (model, mode), batch in largest.items():
    base = largest.get((model, 'autodiff'))
    if mode != 'autodiff' and base:
      lines.append(f'{prefix}{model}: {mode} fits ~{batch:,} images per step, autodiff '
                   f'~{base:,}: {batch / base:.1f}x (XLA memory-analysis estimates)')
  big = [r for r in train if r.get('compile_s') is not None
         and (r.get('config_blocks') or 0) >= 100]
  if not big:
    return lines + [f'{prefix}100-block models: no train row compiled (compile goal not '
                    'checked)']
  worst = max(big, key=lambda r: r['compile_s'])
  verdict = 'met' if worst['compile_s'] < COMPILE_GOAL_S else 'NOT met'
  return lines + [f'{prefix}100-block models: slowest train-step compile '
                  f'{worst["compile_s"]:.1f} s ({worst["model"]} {worst["mode"]} batch '
                  f'{worst["batch"]}, {worst["blocks"]} blocks) of {len(big)} rows; goal < '
                  f'{COMPILE_GOAL_S:.0f} s: {verdict}']


def _model(row):
  return row['model'].replace(' (smoke)', '')


def _plain_bn_relu(row):
  return PLAIN_NOTE in (row.get('note') or '')


def bn_relu_lines(rows, prefix=''):
  """Each PLAIN_BN_RELU row against the fused row of the same model, mode and batch."""
  fused = {(r['model'], r['mode'], r['batch']): r for r in rows
           if r['what'] == 'train' and not _plain_bn_relu(r) and r.get('img_s')}
  lines = []
  for plain in rows:
    after = fused.get((plain['model'], plain.get('mode'), plain.get('batch')))
    if plain['what'] != 'train' or not _plain_bn_relu(plain) or not plain.get('img_s') \
        or after is None:
      continue
    peak = ''
    if plain.get('peak_gib') and after.get('peak_gib'):
      peak = f'; peak {after["peak_gib"]:.2f} GiB against {plain["peak_gib"]:.2f}'
    lines.append(f'{prefix}{_model(plain)} {plain["mode"]} batch {plain["batch"]}: fused '
                 f'BN-ReLU {after["img_s"]:,.0f} images/s against plain '
                 f'{plain["img_s"]:,.0f} = {after["img_s"] / plain["img_s"]:.2f}x{peak}')
  return lines


def _fastest(rows, what, model, mode=None):
  """The row of `what` ('train' or 'authors') and `model` (and `mode`) with the most
  images/s, or None."""
  timed = [r for r in rows if r['what'] == what and _model(r) == model and r.get('img_s')
           and mode in (None, r['mode'])]
  return max(timed, key=lambda r: r['img_s']) if timed else None


def _said(row):
  return f'{row["img_s"]:,.0f} images/s ({row["mode"]}, batch {row["batch"]})'


def authors_lines(rows, prefix='', card=''):
  """Issue 29 item 1: the best of our rows against the best of the authors' rows of the
  same run, per model (bijective_released against TARGET_RATIO), and against each of their
  modes (eager, compile)."""
  lines = []
  for model in ('bijective_released', 'cifar10'):
    theirs = _fastest(rows, 'authors', model)
    if theirs is None:
      continue
    ours = _fastest(rows, 'train', model)
    if ours is None:
      lines.append(f'{prefix}{model}: no timed row of ours in this run (against the authors\' '
                   f'{theirs["img_s"]:,.0f} images/s)')
      continue
    for mode in ('eager', 'compile'):
      row = _fastest(rows, 'authors', model, mode)
      if row:
        lines.append(f'{prefix}{model} on {card or "this card"}, same run: ours {_said(ours)} = '
                     f'{ours["img_s"] / row["img_s"]:.2f}x the authors\' {_said(row)}')
    if model == 'bijective_released':
      ratio = ours['img_s'] / theirs['img_s']
      verdict = 'met' if ratio >= TARGET_RATIO else 'NOT met'
      lines.append(f'{prefix}{model}: best of ours / best of theirs = {ratio:.2f}x; target '
                   f'{TARGET_RATIO:.1f}x: {verdict}')
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--budget_s', type=float, default=420.0, help='no row starts after it')
  parser.add_argument('--smoke', action='store_true', help='shrunken models (CPU check)')
  parser.add_argument('--memory_gib', type=float, help='memory to plan with where none is known')
  parser.add_argument('--min_seconds', type=float, default=2.0, help='timing per row')
  parser.add_argument('--max_batch', type=int, default=4096, help="cap for the 'max' rows")
  parser.add_argument('--authors_rows', default='', help="authors_torch.py's --json_out")
  args = parser.parse_args(argv)
  run_suite(args.budget_s, args.smoke, args.memory_gib, args.min_seconds, args.max_batch,
            authors_rows=args.authors_rows)


if __name__ == '__main__':
  main()
