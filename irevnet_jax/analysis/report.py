"""report.json (every number) and report.md (tables and links to the plots)."""
import json
import math
import os


def _finite(value):
  """JSON has no inf/nan: write them as strings."""
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value


def write_json(report: dict, path: str) -> str:
  with open(path, 'w') as f:
    json.dump(_finite(report), f, indent=2)
  return path


def _table(header, rows):
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def markdown(report: dict) -> str:
  """The report as Markdown; plot links are relative to the report's folder."""
  run, data, plots = report['run'], report['data'], report['plots']
  out = [f'# Analysis of {run.get("workdir") or "a model"}', '']
  out.append(f'Checkpoint step {run.get("step")}, model `{run.get("arch")}`, dataset '
             f'`{run.get("dataset")}`; {data["train_examples"]} train / '
             f'{data["eval_examples"]} eval examples used. Trained head eval accuracy: '
             f'**{report["head_accuracy"]:.4f}**.')
  out += ['', '## 1. Reconstruction', '']
  rec = report['reconstruction']
  if rec.get('skipped'):
    out.append(rec['skipped'])
  else:
    out.append(_table(
        ['examples', 'relative L2 error', 'max abs error', 'worst image rel. error', 'PSNR (dB)'],
        [[rec['examples'], f'{rec["rel_l2_error"]:.3e}', f'{rec["max_abs_error"]:.3e}',
          f'{rec["max_image_rel_error"]:.3e}', f'{rec["psnr_db"]:.1f}']]))
    collapsed = rec.get('collapsed_batch_norms') or []
    if collapsed:
      out += ['', f'{len(collapsed)} BatchNorm layer(s) have a running variance below 1e-6 '
              '(each amplifies input errors ~316x in the inverse): '
              + ', '.join(f'`{c["layer"]}` ({c["min_var"]:.1e})' for c in collapsed[:6])
              + (' ...' if len(collapsed) > 6 else '') + '.']
    out += ['', f'float32, precision "highest". ![reconstruction]({plots["reconstruction"]})']
  out += ['', '## 2. Interpolation', '']
  interp = report['interpolation']
  if interp.get('skipped'):
    out.append(interp['skipped'])
  else:
    out.append(f'{len(interp["pairs"])} pairs of eval images, {interp["steps"]} steps; '
               f'end points rebuilt to within {interp["endpoint_max_abs_error"]:.2e}. '
               f'Head predictions along each z path: '
               + '; '.join(' '.join(map(str, p)) for p in interp['predictions']) + '.')
    out += ['', f'![interpolation]({plots["interpolation"]})']
  out += ['', '## 3. Separation and contraction with depth', '']
  out.append(_table(
      ['depth', 'blocks', 'map', 'probe dim', 'linear acc', '1-NN acc', 'intra/inter'],
      [[d['name'], d['blocks'], 'x'.join(map(str, d['shape'])), d['dim'],
        f'{d["linear_accuracy"]:.4f}' + ('' if d['linear_converged'] else ' (not converged)'),
        f'{d["nn1_accuracy"]:.4f}', f'{d["contraction"]:.4f}'] for d in report['depth']]))
  out += ['', f'![depth]({plots["depth"]})']
  pca = report['pca']
  out += ['', f'## 4. PCA of {pca["depth"]}', '']
  out.append(f'Rank {pca["rank"]}; full-rank probe accuracy {pca["full_accuracy"]:.4f}; '
             f'the top **{pca["d_at_fraction"]}** components reach '
             f'{100 * pca["fraction"]:.0f}% of it and explain '
             f'{100 * pca["explained_variance_at_d"]:.1f}% of the variance.')
  out += ['', _table(['d', 'accuracy', 'explained variance'],
                     [[d, f'{a:.4f}', f'{v:.4f}'] for d, a, v in
                      zip(pca['dims'], pca['accuracy'], pca['explained_variance'])])]
  out += ['', f'![pca]({plots["pca"]})', '']
  timings = ', '.join(f'{k} {v:.1f}s' for k, v in report['timings_s'].items())
  out += ['', f'Timings: {timings}.', '']
  return '\n'.join(out)


def write_markdown(report: dict, path: str) -> str:
  with open(path, 'w') as f:
    f.write(markdown(report))
  return path


def write(report: dict, out_dir: str):
  """Writes report.json and report.md into out_dir; returns their paths."""
  return (write_json(report, os.path.join(out_dir, 'report.json')),
          write_markdown(report, os.path.join(out_dir, 'report.md')))
