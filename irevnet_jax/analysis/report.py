"""report.json (every number) and report.md (tables and links to the plots)."""
import json
import math
import os

from irevnet_jax.run import paths


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
  """Writes `report` as JSON (inf / nan as strings), whole or not at all."""
  paths.write_bytes(path, json.dumps(_finite(report), indent=2).encode())
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
  out += ['', '## 5. Metamers: what the head ignores', '']
  out += _metamers(report.get('metamers') or {'skipped': 'Not computed.'}, plots)
  timings = ', '.join(f'{k} {v:.1f}s' for k, v in report['timings_s'].items())
  out += ['', f'Timings: {timings}.', '']
  return '\n'.join(out)


def _metamers(meta: dict, plots: dict) -> list:
  """Section 5's lines: the summary, one table row per pair, the figure."""
  if meta.get('skipped'):
    return [meta['skipped']]
  s, n = meta['summary'], meta['null_energy']
  out = [f'{s["pairs"]} pairs (a, b) of different labels; z* has a\'s logits and is the '
         f'representation nearest z_b that the head allows ({s["method"]}); x* = invert(z*). '
         f'forward(x*)\'s logits within {s["tolerance"]:.0e} of a\'s: '
         f'**{100 * s["within_tolerance"]:.0f}%** (max relative difference '
         f'{s["max_logits_rel_error"]:.1e}); x* classified as a: '
         f'**{100 * s["classified_as_a"]:.0f}%** (as a\'s label: '
         f'{100 * s["classified_as_label_a"]:.0f}%); x* closer to b than to a in pixels: '
         f'**{100 * s["closer_to_b"]:.0f}%**. Energy in the null space of the head\'s '
         f'pool + linear map: {100 * n["z"]:.1f}% of z ({100 * n["z_pool"]:.1f}% from pooling '
         f'alone), {100 * n["u"]:.1f}% of relu(bn(z)).', '']
  out.append(_table(
      ['a', 'b', 'x* predicted', 'logits rel. diff', 'RMS x*-b', 'RMS x*-a', 'RMS a-b',
       '\\|z*-z_b\\| / \\|z_a-z_b\\|', 'units on / off'],
      [[p['label_a'], p['label_b'], p['predicted_star'], f'{p["logits_rel_error"]:.1e}',
        f'{p["pixel_rms_to_b"]:.3f}', f'{p["pixel_rms_to_a"]:.3f}', f'{p["pixel_rms_a_b"]:.3f}',
        f'{p["z_distance_to_b"] / max(p["z_distance_a_b"], 1e-30):.3f}',
        f'{p["units_switched_on"]} / {p["units_switched_off"]}'] for p in meta['pairs']]))
  out += ['', f'![metamers]({plots["metamers"]})', '']
  return out


def write_markdown(report: dict, path: str) -> str:
  paths.write_bytes(path, markdown(report).encode())
  return path


def write(report: dict, out_dir: str):
  """Writes report.json and report.md into out_dir; returns their paths."""
  return (write_json(report, os.path.join(out_dir, 'report.json')),
          write_markdown(report, os.path.join(out_dir, 'report.md')))
