"""The whole analysis of one trained network: two streaming passes, then the
probes, PCA, plots and report.

  eval pass:  logits, features by depth and (i-RevNets) invert(forward(x))
  train pass: features by depth
  then:       reconstruction stats, interpolation paths, metamers, probes and
              contraction per depth, PCA of the final representation, PNGs,
              report.{md,json}
"""
import contextlib
import dataclasses
import os
import time
from typing import Iterable, Optional

from absl import logging
import numpy as np

from irevnet_jax.model import precision
from irevnet_jax.analysis import (features, interpolation, metamer_pairs, pca, plots,
                                  probes, reconstruction, report)
from irevnet_jax.errors import UserError


@dataclasses.dataclass
class Options:
  """What to compute and how much of the data to use."""
  max_train_examples: int = 10000   # train features kept for the probes
  max_eval_examples: int = 5000     # eval examples scored (and reconstructed)
  max_contraction_examples: int = 2000   # eval examples in the O(N^2) distance ratio
  every_k_blocks: int = 0           # also take features every k blocks (0: stage outputs only)
  pool_size: int = 0                # pool maps to at most this grid (0: only when too big)
  max_feature_dim: int = 4096       # features per depth after pooling / projection (0: no limit)
  num_images: int = 8               # reconstruction grid columns
  num_pairs: int = 4                # interpolation pairs
  num_steps: int = 8                # interpolation steps, end points included
  num_metamers: int = 8             # metamer pairs (0: none)
  probe_c: float = 10.0             # inverse L2 strength of the linear probe
  pca_fraction: float = 0.99        # report the smallest d reaching this share of the accuracy
  blas_threads: int = 1             # numpy/scikit-learn threads (0: library default; 1 avoids
                                    # oversubscription on shared CPUs)
  seed: int = 0                     # random projections

  def validate(self):
    for name in ('max_train_examples', 'max_eval_examples', 'max_contraction_examples',
                 'num_images', 'num_pairs'):
      if getattr(self, name) < 1:
        raise UserError(f'{name}={getattr(self, name)} must be >= 1.')
    if self.num_steps < 2:
      raise UserError(f'num_steps={self.num_steps} must be >= 2, e.g. 8.')
    if self.every_k_blocks < 0 or self.blas_threads < 0 or self.num_metamers < 0:
      raise UserError('every_k_blocks, blas_threads and num_metamers must be >= 0 '
                      '(0 = off / default).')


# The model config the analyses compute with: the exact-inversion rule's
# (`model.precision`), as the training loop's evaluation of inversion.
analysis_model_config = precision.exact_model_config


class _Timer:
  def __init__(self):
    self.times = {}

  @contextlib.contextmanager
  def __call__(self, name):
    start = time.perf_counter()
    yield
    self.times[name] = round(time.perf_counter() - start, 2)


def _blas_limit(threads):
  if not threads:
    return contextlib.nullcontext()
  from threadpoolctl import threadpool_limits   # installed with scikit-learn
  return threadpool_limits(limits=threads)


def analyze(net, variables, train_batches: Iterable[dict], eval_batches: Iterable[dict],
            out_dir: str, options: Optional[Options] = None, num_train: Optional[int] = None,
            num_eval: Optional[int] = None, run_info: Optional[dict] = None,
            pixel_space: Optional[plots.PixelSpace] = None) -> dict:
  """Runs every analysis and writes the PNGs and report.{md,json} into out_dir.

  Args:
    net: a `Net` from `irevnet_jax.build` (best built from `analysis_model_config`).
    variables: its {'params', 'batch_stats'}.
    train_batches / eval_batches: iterables of {'image' (B, H, W, C), 'label' (B,)[,
      'mask' (B,)]}; masked (padded) examples are skipped. train_batches may be endless.
    num_train / num_eval: split sizes if known (caps the passes and the progress bars).
    run_info: extra fields for the report's 'run' section (workdir, step, ...).
    pixel_space: how the batches' images map back to pixels (the data source's
      pixel_mean / pixel_std), for showing images in the plots; None shows the model's
      input with the inputs' range as black .. white. The numbers are computed on the
      model's input either way.
  Returns:
    The report dict (also written to out_dir/report.json).
  """
  options = options or Options()
  options.validate()
  os.makedirs(out_dir, exist_ok=True)
  timer = _Timer()
  invertible = bool(net.invertible)
  depths = features.depths_for(net, options.every_k_blocks, options.pool_size,
                               options.max_feature_dim)
  logging.info('Depth points: %s', ', '.join(f'{d.name} ({d.dim})' for d in depths))

  # Eval pass: features, logits and reconstructions; keep a few images for the grids.
  recon = reconstruction.ReconstructionStats()
  keep = max(options.num_images, 4 * options.num_pairs, 4 * options.num_metamers, 32)
  samples = {'x': [], 'x_hat': [], 'label': []}

  def on_eval_batch(x, labels, out):
    if invertible:
      recon.update(x, out['x_hat'])
    if sum(len(s) for s in samples['label']) < keep:
      samples['x'].append(x)
      samples['label'].append(labels)
      if invertible:
        samples['x_hat'].append(out['x_hat'])

  with timer('eval_pass'):
    eval_set = features.extract(
        features.make_batch_fn(net, depths, with_inverse=invertible, seed=options.seed),
        variables, eval_batches, depths, options.max_eval_examples, num_eval, 'eval',
        on_eval_batch)
  with timer('train_pass'):
    train_set = features.extract(
        features.make_batch_fn(net, depths, seed=options.seed), variables, train_batches,
        depths, min(options.max_train_examples, num_train or options.max_train_examples),
        num_train, 'train')
  samples = {k: np.concatenate(v) if v else None for k, v in samples.items()}
  head_accuracy = float(np.mean(eval_set.logits.argmax(-1) == eval_set.labels))
  path = lambda name: os.path.join(out_dir, name)
  plot_files = {}

  # 1. Reconstruction.
  if invertible:
    rec = recon.result()
    rec['collapsed_batch_norms'] = [
        {'layer': name, 'min_var': var}
        for name, var in reconstruction.collapsed_batch_norms(variables)]
    n = options.num_images
    plots.reconstruction_grid(samples['x'][:n], samples['x_hat'][:n], path('reconstruction.png'),
                              rec['rel_l2_error'], pixel_space)
    plot_files['reconstruction'] = 'reconstruction.png'
  else:
    rec = {'skipped': f'{type(net).__name__} is not invertible: no reconstruction.'}

  # 2. Interpolation.
  pairs = interpolation.pick_pairs(samples['label'], options.num_pairs) if invertible else []
  if pairs:
    with timer('interpolation'):
      a = samples['x'][[i for i, _ in pairs]]
      b = samples['x'][[j for _, j in pairs]]
      pixel_paths, latent_paths, predicted = interpolation.interpolate(
          net, variables, a, b, options.num_steps)
      end_error = float(max(np.abs(latent_paths[:, 0] - a).max(),
                            np.abs(latent_paths[:, -1] - b).max()))
      plots.interpolation_grid(pixel_paths, latent_paths, path('interpolation.png'), predicted,
                               pixel_space)
    plot_files['interpolation'] = 'interpolation.png'
    interp = {'pairs': [[int(i), int(j)] for i, j in pairs],
              'pair_labels': [[int(samples['label'][i]), int(samples['label'][j])]
                              for i, j in pairs],
              'steps': options.num_steps, 'endpoint_max_abs_error': end_error,
              'predictions': predicted.astype(int).tolist()}
  elif invertible:
    interp = {'skipped': 'No two kept eval images have different labels: no interpolation.'}
  else:
    interp = {'skipped': f'{type(net).__name__} is not invertible: no interpolation.'}

  # 5. Metamers (reported after PCA): a's logits, representation nearest b's.
  with timer('metamers'):
    meta = metamers_section(net, variables, samples, options.num_metamers,
                            path('metamers.png'), pixel_space)
  if 'skipped' not in meta:
    plot_files['metamers'] = 'metamers.png'
    logging.info('%s', metamer_pairs.summary_line(meta))

  # 3. Separation and contraction by depth.
  depth_rows = []
  m = options.max_contraction_examples
  with timer('probes'), _blas_limit(options.blas_threads):
    for i, depth in enumerate(depths):
      tr, ev = train_set.features[i], eval_set.features[i]
      lin = probes.linear_probe(tr, train_set.labels, ev, eval_set.labels, c=options.probe_c)
      nn1 = probes.nearest_neighbour(tr, train_set.labels, ev, eval_set.labels)
      con = probes.contraction(ev[:m], eval_set.labels[:m])
      depth_rows.append({
          'name': depth.name, 'blocks': depth.blocks, 'shape': list(depth.shape),
          'dim': depth.dim, 'grid': depth.grid, 'projected_channels': depth.channels,
          'linear_accuracy': lin['accuracy'], 'linear_train_accuracy': lin['train_accuracy'],
          'linear_converged': lin['converged'], 'nn1_accuracy': nn1,
          'contraction': con['ratio'], 'intra_distance': con['intra'],
          'inter_distance': con['inter']})
      logging.info('%s: linear %.4f, 1-NN %.4f, contraction %.4f', depth.name,
                   lin['accuracy'], nn1, con['ratio'])
  plots.depth_plot([d['name'] for d in depth_rows], [d['blocks'] for d in depth_rows],
                   [d['linear_accuracy'] for d in depth_rows],
                   [d['nn1_accuracy'] for d in depth_rows],
                   [d['contraction'] for d in depth_rows], path('depth.png'), head_accuracy)
  plot_files['depth'] = 'depth.png'

  # 4. PCA of the final representation.
  with timer('pca'), _blas_limit(options.blas_threads):
    curve = pca.pca_curve(train_set.features[-1], train_set.labels, eval_set.features[-1],
                          eval_set.labels, fraction=options.pca_fraction, c=options.probe_c)
  plots.pca_plot(curve, path('pca.png'), depths[-1].name)
  plot_files['pca'] = 'pca.png'
  ratio = curve.pop('explained_variance_ratio')
  curve['explained_variance_at_d'] = float(np.sum(ratio[:curve['d_at_fraction']]))
  curve['depth'] = depths[-1].name

  result = {
      'run': dict(run_info or {}),
      'data': {'train_examples': train_set.num_examples, 'eval_examples': eval_set.num_examples},
      'head_accuracy': head_accuracy,
      'reconstruction': rec,
      'interpolation': interp,
      'depth': depth_rows,
      'pca': curve,
      'metamers': meta,
      'plots': plot_files,
      'options': dataclasses.asdict(options),
      'timings_s': timer.times,
  }
  result['run'].setdefault('invertible', invertible)
  report.write(result, out_dir)
  logging.info('Wrote %s', os.path.join(out_dir, 'report.md'))
  return result


def metamers_section(net, variables, samples: dict, num_pairs: int, png: str,
                     pixel_space: Optional[plots.PixelSpace] = None) -> dict:
  """Metamers of up to `num_pairs` pairs of the kept eval samples ({'x', 'label'}) of
  different labels: the figure at `png` and the numbers of `metamer_pairs.compute`
  (with 'pair_indices'), or {'skipped': why}."""
  if not net.invertible:
    return {'skipped': f'{type(net).__name__} is not invertible: no metamers.'}
  pairs = interpolation.pick_pairs(samples['label'], num_pairs) if num_pairs else []
  if not pairs:
    return {'skipped': 'No metamers: --num_metamers=0 or no two kept eval images have '
                       'different labels.'}
  a, b = [i for i, _ in pairs], [j for _, j in pairs]
  x_star, result = metamer_pairs.compute(net, variables, samples['x'][a], samples['x'][b],
                                         samples['label'][a], samples['label'][b])
  plots.metamer_grid(samples['x'][a], samples['x'][b], x_star, png, samples['label'][a],
                     samples['label'][b], [p['predicted_star'] for p in result['pairs']],
                     pixel_space)
  result['pair_indices'] = [[int(i), int(j)] for i, j in pairs]
  return result
