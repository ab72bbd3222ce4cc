"""Linear separability of the top principal components of a representation.

PCA is fitted on the train features (eigenvectors of the centred Gram matrix); both
splits are projected on the top-d components and the linear probe of `probes`
is trained and scored on them, for d on a doubling grid up to the rank. The
smallest d whose accuracy reaches `fraction` (99%) of the full-rank accuracy is
then narrowed down by bisection between grid points.
"""
import numpy as np

from irevnet_jax.analysis import probes
from irevnet_jax.errors import UserError


def components(train_x):
  """(mean (D,), components (r, D) rows by decreasing variance, variances (r,)),
  r = rank of the centred train features. Eigen-decomposes the smaller of the
  two Gram matrices, (N, N) or (D, D)."""
  x = np.asarray(train_x, np.float64)
  mean = x.mean(axis=0)
  x = x - mean
  n, d = x.shape
  if n < d:
    evals, u = np.linalg.eigh(x @ x.T)
    evals, u = evals[::-1], u[:, ::-1]
  else:
    evals, vecs = np.linalg.eigh(x.T @ x)
    evals, vecs = evals[::-1], vecs[:, ::-1]
  rank = int(np.sum(evals > max(evals[0], 0.0) * max(n, d) * 1e-12)) if evals[0] > 0 else 0
  if rank == 0:
    raise UserError('PCA of constant features: the train features have no variance.')
  evals = evals[:rank]
  if n < d:
    vecs = (x.T @ u[:, :rank]) / np.sqrt(evals)     # right singular vectors
  else:
    vecs = vecs[:, :rank]
  return mean, vecs.T, evals / max(n - 1, 1)


def dims_grid(rank: int):
  """1, 2, 4, ... below `rank`, then `rank`."""
  grid, d = [], 1
  while d < rank:
    grid.append(d)
    d *= 2
  return grid + [rank]


def pca_curve(train_x, train_y, test_x, test_y, fraction: float = 0.99, refine: bool = True,
              **probe_kwargs) -> dict:
  """Probe accuracy on the top-d principal components.

  Returns {'dims', 'accuracy', 'explained_variance' (cumulative ratio at each d),
  'rank', 'full_accuracy', 'd_at_fraction', 'fraction', 'explained_variance_ratio'
  (per component)}; 'dims' and 'accuracy' are sorted by d and include the
  points that the bisection visited.
  """
  if not 0 < fraction <= 1:
    raise UserError(f'fraction={fraction} must be in (0, 1], e.g. 0.99.')
  mean, comps, var = components(train_x)
  rank = len(var)
  ratio = var / var.sum()
  train_p = (np.asarray(train_x, np.float64) - mean) @ comps.T
  test_p = (np.asarray(test_x, np.float64) - mean) @ comps.T
  scores = {}

  def score(d):
    if d not in scores:
      scores[d] = probes.linear_probe(train_p[:, :d], train_y, test_p[:, :d], test_y,
                                      **probe_kwargs)['accuracy']
    return scores[d]

  grid = dims_grid(rank)
  full = score(rank)
  target = fraction * full
  first = next(d for d in grid if score(d) >= target)
  for d in grid:
    score(d)                                        # the whole curve, for the plot
  if refine and first > 1:
    lo, hi = grid[grid.index(first) - 1], first     # score(lo) < target <= score(hi)
    while hi - lo > 1:
      mid = (lo + hi) // 2
      lo, hi = (lo, mid) if score(mid) >= target else (mid, hi)
    first = hi
  dims = sorted(scores)
  cumulative = np.cumsum(ratio)
  return {
      'dims': dims,
      'accuracy': [scores[d] for d in dims],
      'explained_variance': [float(cumulative[d - 1]) for d in dims],
      'explained_variance_ratio': ratio.tolist(),
      'rank': rank,
      'full_accuracy': full,
      'fraction': fraction,
      'd_at_fraction': first,
  }
