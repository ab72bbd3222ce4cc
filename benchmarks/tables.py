"""Rows and tables without jax, so that benchmarks/authors_torch.py runs where only PyTorch
is: `run_items` (rows by a time budget, printed as they come) and `format_table`."""
import gc
import sys
import time
import traceback


def run_items(items, make_rows, budget_s=float('inf'), guess_s=lambda item, costs: 0.0):
  """The rows of `items` (kind, model, mode, ...) by `make_rows(item)`, printed as they come;
  a failed item gets an error row, one whose `guess_s(item, {model: seconds of its last
  item})` exceeds what is left of `budget_s` a skip row."""
  began, rows, costs = time.perf_counter(), [], {}
  for item in items:
    label, needed = ' '.join(map(str, item)), guess_s(item, costs)
    left = began + budget_s - time.perf_counter()
    failed = {'what': item[0], 'model': item[1],
              'mode': item[2] if item[0] in ('train', 'authors') else None}
    if left < needed:
      rows.append(dict(failed, note=f'{label}: skipped, {left:.0f} s left, ~{needed:.0f} needed'))
      print(f'[skip] {rows[-1]["note"]}', flush=True)
      continue
    started = time.perf_counter()
    try:
      new_rows = make_rows(item)
    except Exception as e:  # noqa: BLE001  one failure must not lose the other rows
      traceback.print_exc(file=sys.stdout)   # the whole story in the log; the row gets a line
      message = (str(e).strip().splitlines() or [''])[0][:100]
      new_rows = [dict(failed, note=f'{label}: error: {type(e).__name__}: {message}')]
    gc.collect()   # free the last row's device buffers before the next row plans its memory
    costs[item[1]] = time.perf_counter() - started
    print(f'[{time.perf_counter() - began:4.0f} s] {label} '
          f'({costs[item[1]]:.0f} s)', flush=True)
    for row in new_rows:
      print('    ' + ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                               for k, v in row.items()
                               if k not in ('what', 'config_blocks') and v not in (None, '')),
            flush=True)
    rows += new_rows
  return rows


def format_table(rows, columns, markdown: bool = False) -> str:
  """rows: dicts; columns: (key, header, format spec); None prints '-'. Numbers right-
  aligned, text (spec '') left; markdown=True pastes into benchmarks/RESULTS.md."""
  cells = [[header for _, header, _ in columns]]
  for row in rows:
    cells.append(['-' if row.get(key) is None else format(row[key], spec) if spec
                  else str(row[key]) for key, _, spec in columns])
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  out = [' | '.join(c.rjust(w) if spec else c.ljust(w)
                    for c, w, (_, _, spec) in zip(r, widths, columns)) for r in cells]
  if markdown:
    out = [f'| {line} |' for line in out]
    out.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
  else:
    out = [line.rstrip() for line in out]
    out.insert(1, '-+-'.join('-' * w for w in widths))
  return '\n'.join(out)
