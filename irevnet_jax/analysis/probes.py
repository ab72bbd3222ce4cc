"""Separation and contraction of a feature set: a linear probe, a 1-nearest-neighbour
classifier and the intra/inter-class distance ratio.

Features are (N, D) arrays. The linear probe centres them with the train mean
and scales them by one number, the RMS norm of the centred train vectors; both
are rotation invariant, so the probe on the top principal components at full
rank equals the probe on the raw features (see `pca`).
"""
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from irevnet_jax.errors import UserError


def normalise(train, test):
  """(train - mean) / s and (test - mean) / s, s = RMS norm of the centred train rows."""
  train = np.asarray(train, np.float64)
  mean = train.mean(axis=0)
  train = train - mean
  scale = np.sqrt(np.mean(np.sum(train * train, axis=1)))
  scale = scale if scale > 0 else 1.0
  return train / scale, (np.asarray(test, np.float64) - mean) / scale


def linear_probe(train_x, train_y, test_x, test_y, c: float = 10.0, max_iter: int = 1000):
  """Multinomial logistic regression (L2, inverse strength `c`) fitted on train and
  scored on test. Returns {'accuracy', 'train_accuracy', 'converged'}."""
  train_x, test_x = normalise(train_x, test_x)
  clf = LogisticRegression(C=c, max_iter=max_iter)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always', ConvergenceWarning)
    clf.fit(train_x, train_y)
  converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
  return {
      'accuracy': float(np.mean(clf.predict(test_x) == test_y)),
      'train_accuracy': float(np.mean(clf.predict(train_x) == train_y)),
      'converged': converged,
  }


def nearest_neighbour(train_x, train_y, test_x, test_y) -> float:
  """Accuracy of the 1-nearest-neighbour (Euclidean) classifier built on train."""
  clf = KNeighborsClassifier(n_neighbors=1, algorithm='brute')
  clf.fit(np.asarray(train_x, np.float32), train_y)
  return float(np.mean(clf.predict(np.asarray(test_x, np.float32)) == test_y))


def contraction(x, y, chunk: int = 512) -> dict:
  """Mean Euclidean distance between distinct same-class examples ('intra'), between
  different-class examples ('inter'), and their ratio ('ratio').

  The ratio does not change when a layer's features are scaled, so layers of any
  size and scale compare directly: lower means classes are tighter relative to
  how far apart they are. O(N^2 D) in chunks of `chunk` rows; subsample N first.
  """
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  y = np.asarray(y)
  sq = np.sum(x * x, axis=1)
  intra_sum = inter_sum = 0.0
  intra_n = inter_n = 0
  for lo in range(0, len(x), chunk):
    hi = min(lo + chunk, len(x))
    d2 = sq[lo:hi, None] + sq[None, :] - 2.0 * x[lo:hi] @ x.T
    d = np.sqrt(np.maximum(d2, 0.0))
    same = y[lo:hi, None] == y[None, :]
    same[np.arange(hi - lo), np.arange(lo, hi)] = False    # not the pair (i, i)
    diff = y[lo:hi, None] != y[None, :]
    intra_sum += float(d[same].sum())
    intra_n += int(same.sum())
    inter_sum += float(d[diff].sum())
    inter_n += int(diff.sum())
  if not intra_n or not inter_n:
    raise UserError(f'contraction needs two examples of some class and two classes; got '
                    f'{len(y)} examples of {len(np.unique(y))} class(es).')
  intra, inter = intra_sum / intra_n, inter_sum / inter_n
  return {'intra': intra, 'inter': inter, 'ratio': intra / inter}
