"""Features by depth: where to look in the network, how to shrink big maps, and a
streaming extractor that keeps only (num_examples, dim) float32 arrays on the host.

For an i-RevNet a depth point is the merged pair after a stage (and optionally
after every k blocks): the whole representation at that depth, from which the
input can still be rebuilt. Depth 0 is the input image. A baseline (a network
with `net.invertible == False`) exposes only its input and its final features.

Big maps are shrunk before they leave the device: an adaptive average pool to a
grid of at most `pool_size` x `pool_size`, chosen automatically when a map has
more than `max_feature_dim` values, then, only if the channels alone are still
too many, a fixed Gaussian random projection of the channels at each position.
"""
import dataclasses
import math
from typing import Callable, Iterable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from irevnet_jax.model import ops, reversible
from irevnet_jax.analysis.progress import ProgressBar
from irevnet_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Depth:
  """One place where features are taken.

  name: 'input', 'stage{i}' (a stage's output; the last one is z) or
    'stage{i}.block{j}' (after j blocks of stage i); 'features' for baselines.
  blocks: number of blocks applied before this point (the depth axis of plots).
  shape: the raw map's shape without the batch axis, (H, W, C) or (D,).
  grid: (h, w) after adaptive average pooling, or None (no pooling).
  channels: channels after random projection, or None (no projection).
  """
  name: str
  blocks: int
  shape: Tuple[int, ...]
  grid: Optional[Tuple[int, int]] = None
  channels: Optional[int] = None

  @property
  def dim(self) -> int:
    """Length of the flat feature vector that the probes see."""
    if len(self.shape) == 1:
      return self.channels or self.shape[0]
    h, w = self.grid or self.shape[:2]
    return h * w * (self.channels or self.shape[2])

  @property
  def raw_dim(self) -> int:
    return math.prod(self.shape)


def plan_reduction(shape, pool_size: int = 0, max_feature_dim: int = 4096):
  """(grid, channels) that bring a map of `shape` to at most `max_feature_dim` values.

  pool_size > 0 always pools to at most pool_size x pool_size; pool_size = 0
  pools only when needed, to the finest grid that fits. max_feature_dim = 0
  means no limit.
  """
  if pool_size < 0 or max_feature_dim < 0:
    raise UserError(f'pool_size={pool_size} and max_feature_dim={max_feature_dim} must be '
                    f'>= 0 (0 = automatic / no limit), e.g. pool_size=0, max_feature_dim=4096.')
  limit = max_feature_dim or math.inf
  if len(shape) == 1:
    return None, (max_feature_dim if shape[0] > limit else None)
  h, w, c = shape
  grid = None
  if pool_size:
    grid = (min(pool_size, h), min(pool_size, w))
  elif h * w * c > limit:
    s = max(h, w)
    while s > 1 and min(s, h) * min(s, w) * c > limit:
      s -= 1
    grid = (min(s, h), min(s, w))
  gh, gw = grid or (h, w)
  channels = None
  if gh * gw * c > limit:
    channels = max(1, int(limit) // (gh * gw))
  if grid == (h, w):
    grid = None
  return grid, channels


def irevnet_depths(arch, every_k: int = 0, pool_size: int = 0,
                   max_feature_dim: int = 4096) -> List[Depth]:
  """Depth points of an i-RevNet `Architecture`: the input, then after every
  `every_k` blocks (0: none) and at the end of every stage."""
  if every_k < 0:
    raise UserError(f'every_k={every_k} must be >= 0 (0 = stage outputs only), e.g. 2.')
  def make(name, blocks, shape):
    grid, channels = plan_reduction(shape, pool_size, max_feature_dim)
    return Depth(name, blocks, tuple(shape), grid, channels)

  depths = [make('input', 0, arch.input_shape)]
  done = 0
  for i, stage in enumerate(arch.stages):
    spec = stage.first
    h, w = spec.spatial[0] // spec.stride, spec.spatial[1] // spec.stride
    n = 1 + stage.num_rest
    for j in range(1, n + 1):
      done += 1
      if j == n:
        depths.append(make(f'stage{i}', done, (h, w, 2 * spec.width)))
      elif every_k and done % every_k == 0:
        depths.append(make(f'stage{i}.block{j}', done, (h, w, 2 * spec.width)))
  return depths


def baseline_depths(net, pool_size: int = 0, max_feature_dim: int = 4096) -> List[Depth]:
  """The input and the final features of a non-invertible network."""
  x = jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32)
  variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
  _, feats = jax.eval_shape(net.forward, variables, x)
  depths = []
  for name, shape in (('input', tuple(net.input_shape)), ('features', tuple(feats.shape[1:]))):
    grid, channels = plan_reduction(shape, pool_size, max_feature_dim)
    depths.append(Depth(name, 0 if name == 'input' else 1, shape, grid, channels))
  return depths


def depths_for(net, every_k=0, pool_size=0, max_feature_dim=4096) -> List[Depth]:
  """`irevnet_depths` for an i-RevNet, `baseline_depths` otherwise."""
  if net.invertible:
    return irevnet_depths(net.arch, every_k, pool_size, max_feature_dim)
  return baseline_depths(net, pool_size, max_feature_dim)


def _pool_matrix(n: int, bins: int) -> np.ndarray:
  """(bins, n) averaging matrix of adaptive average pooling: bin i covers
  [floor(i n / bins), ceil((i + 1) n / bins))."""
  m = np.zeros((bins, n), np.float32)
  for i in range(bins):
    lo, hi = (i * n) // bins, -((-(i + 1) * n) // bins)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def _projection(depth: Depth, index: int, seed: int) -> np.ndarray:
  """Fixed Gaussian (C, channels) matrix scaled by 1/sqrt(channels): it keeps
  squared norms in expectation (Johnson-Lindenstrauss)."""
  rng = np.random.RandomState(seed + 1009 * index)
  c = depth.shape[-1]
  return (rng.standard_normal((c, depth.channels)) / np.sqrt(depth.channels)).astype(np.float32)


def reduce_fn(depths: List[Depth], seed: int = 0) -> Callable:
  """A function (list of maps (N, *shape)) -> list of (N, dim) float32 per depth."""
  plans = []
  for index, depth in enumerate(depths):
    pool = None
    if depth.grid is not None:
      h, w = depth.shape[:2]
      pool = (_pool_matrix(h, depth.grid[0]), _pool_matrix(w, depth.grid[1]))
    proj = _projection(depth, index, seed) if depth.channels else None
    plans.append((pool, proj))

  def reduce(maps):
    out = []
    for f, (pool, proj) in zip(maps, plans):
      f = f.astype(jnp.float32)
      if pool is not None:
        f = jnp.einsum('ph,nhwc,qw->npqc', pool[0], f, pool[1],
                       precision=jax.lax.Precision.HIGHEST)
      if proj is not None:
        f = jnp.einsum('...c,cd->...d', f, proj, precision=jax.lax.Precision.HIGHEST)
      out.append(f.reshape(f.shape[0], -1))
    return out

  return reduce


def _stage_walk(module, pair, depths):
  """Runs the stages on `pair`, returning the merged pair at each non-input depth.

  A stage with no wanted point inside runs as one public `Stage` call; otherwise
  its first block and then slices of its stacked alike blocks run one chunk at a
  time (eval mode, so the backprop mode is irrelevant: plain 'autodiff' scans).
  """
  wanted = {d.blocks for d in depths if d.blocks > 0}
  maps = []
  done = 0
  for stage, spec in zip(module.stages, module.arch.stages):
    n = 1 + spec.num_rest
    if not any(done < b < done + n for b in wanted):
      pair = stage(pair)
      maps.append(ops.merge(*pair))
      done += n
      continue
    keys = jax.random.split(jax.random.PRNGKey(0), n)   # unused: eval mode has no dropout
    first = {'params': stage.first_params, 'batch_stats': stage.first_stats.value}
    first = jax.tree_util.tree_map(lambda a: a[None], first)
    pair, _ = reversible.run_blocks('autodiff', spec.first, stage.first_f, first, pair,
                                    keys[:1], False)
    if done + 1 in wanted:
      maps.append(ops.merge(*pair))
    rest = {'params': stage.rest_params, 'batch_stats': stage.rest_stats.value}
    start = 0
    for j in range(1, spec.num_rest + 1):
      if done + 1 + j in wanted:   # always true at the stage's end
        chunk = jax.tree_util.tree_map(lambda a, s=start, e=j: a[s:e], rest)
        pair, _ = reversible.run_blocks('autodiff', spec.rest, stage.rest_f, chunk, pair,
                                        keys[1 + start:1 + j], False)
        maps.append(ops.merge(*pair))
        start = j
    done += n
  return maps


def make_batch_fn(net, depths: List[Depth], with_inverse: bool = False, seed: int = 0):
  """A jitted `fn(variables, x) -> dict` for one batch x (N, H, W, C), eval mode.

  Keys: 'logits' (N, classes), 'features' (one (N, dim) float32 per depth), and
  with `with_inverse` (i-RevNets only) 'x_hat' = invert(forward(x)).
  """
  reduce = reduce_fn(depths, seed)
  if not net.invertible:
    if with_inverse:
      raise UserError(f'{type(net).__name__} is not invertible (net.invertible is False): '
                      f'use with_inverse=False.')

    def baseline_fn(variables, x):
      logits, feats = net.forward(variables, x)
      return {'logits': logits, 'features': reduce([x, feats])}
    return jax.jit(baseline_fn)

  def walk(module, x):
    logits, z = module(x, train=False)
    pair = ops.split(ops.psi(x.astype(z.dtype), module.arch.init_ds))
    maps = [x] + _stage_walk(module, pair, depths)
    out = {'logits': logits, 'features': reduce(maps)}
    if with_inverse:
      out['x_hat'] = module.invert(z)
    return out

  def fn(variables, x):
    return net.module.apply(variables, x, method=walk)
  return jax.jit(fn)


@dataclasses.dataclass
class FeatureSet:
  """Host arrays from one pass: features[i] (N, depths[i].dim), labels (N,), logits (N, K)."""
  depths: List[Depth]
  features: List[np.ndarray]
  labels: np.ndarray
  logits: np.ndarray

  @property
  def num_examples(self) -> int:
    return len(self.labels)


def extract(batch_fn, variables, batches: Iterable[dict], depths: List[Depth],
            max_examples: int, total: Optional[int] = None, desc: str = 'features',
            on_batch: Optional[Callable] = None) -> FeatureSet:
  """Streams `batches` ({'image', 'label'[, 'mask']}) through `batch_fn`.

  Keeps the first `max_examples` real examples (mask > 0); padded examples are
  dropped. `on_batch(images, labels, outputs)` sees each batch's kept examples
  as host arrays (e.g. to accumulate reconstruction errors).
  """
  if max_examples < 1:
    raise UserError(f'max_examples={max_examples} must be >= 1, e.g. 10000.')
  goal = min(max_examples, total) if total else max_examples
  progress = ProgressBar(goal, desc)
  feats = [[] for _ in depths]
  labels, logits = [], []
  count = 0
  for batch in batches:
    if count >= max_examples:
      break
    out = jax.device_get(batch_fn(variables, jnp.asarray(batch['image'])))
    keep = np.ones(len(batch['label']), bool)
    if 'mask' in batch:
      keep = np.asarray(batch['mask']) > 0
    index = np.flatnonzero(keep)[:max_examples - count]
    if not len(index):
      continue
    for store, f in zip(feats, out['features']):
      store.append(np.asarray(f)[index])
    labels.append(np.asarray(batch['label'])[index])
    logits.append(np.asarray(out['logits'])[index])
    if on_batch is not None:
      on_batch(np.asarray(batch['image'])[index], labels[-1],
               {k: (np.asarray(v)[index] if k != 'features' else None) for k, v in out.items()})
    count += len(index)
    progress.update(len(index))
  progress.close()
  if not count:
    raise UserError(f'No examples came out of the {desc} batches (all masked or empty).')
  return FeatureSet(depths, [np.concatenate(f) for f in feats], np.concatenate(labels),
                    np.concatenate(logits))
