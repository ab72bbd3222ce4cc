"""The reversible engine: a stack of alike invertible steps, in one of three backprop modes.

A step is one or more additive couplings (`blocks.block_forward`) applied in
order, each with its own variables of one F architecture:

- an i-RevNet block is one coupling (a, b) -> (S(b), S(a) + F(b));
- a RevNet unit, y1 = x1 + F(x2), y2 = x2 + G(y1), is two stride-1 couplings
  (a, b) -> (b, a + H(b)), with H = F and then H = G.

So both networks run here; what differs is data (the coupling specs and the
variables). The variables of n alike steps are stacked on a leading axis, one
tree per coupling of a step, and the steps run as one `lax.scan`:

- 'autodiff': JAX stores every step's activations for the backward pass.
- 'remat': `jax.checkpoint` around each step: only step inputs are stored.
- 'reversible': a `jax.custom_vjp` around the scan that stores only its output.
  The backward pass walks the couplings in reverse and rebuilds each one's input
  from its output with one evaluation of F, whose vjp also gives the gradients
  (`blocks.block_reverse_step`).

Every mode takes and returns the same pytrees, so variables trained in one mode
run in any other. Running BN statistics come out of the forward pass only: the
backward pass recomputes F with the same batch statistics (it rebuilds the same
inputs) and discards its updates. Dropout masks are replayed from the keys.
"""
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from irevnet_jax.model import blocks
from irevnet_jax.model.layout import BlockSpec


def scan_unroll(block_scan: str):
  """`lax.scan`'s `unroll` for 'unrolled' (True), 'rolled' (1) or 'unroll:<k>' (k blocks per
  loop iteration). 'auto' is unrolled in a program lowered for CPU and rolled for GPU/TPU
  (`_scan` decides it per platform).

  XLA's CPU backend runs convolution gradients inside a while loop far slower
  than straight-line code (inside the loop it keeps the transposed kernel's
  layout, 01oi, and falls back to a naive convolution; benchmarks/RESULTS.md,
  "CPU"). Both compute the same values. On GPU/TPU the
  rolled scan keeps one compiled body however deep the stage (short compiles
  for 100-block models). Unrolled, 'reversible' and 'remat' still save their
  memory on CPU when compiled with `compiler_options.for_platform('cpu')`, which
  keeps their optimization barriers.
  """
  if block_scan.startswith('unroll:'):
    return int(block_scan.split(':', 1)[1])
  return True if block_scan == 'unrolled' else 1


def _scan(step, carry, xs, block_scan, reverse=False):
  """`lax.scan`, except that a single step runs unscanned: a stage's leading block
  may change the pair's shape, which a scan carry cannot.

  'auto' is decided for the platform the function is lowered for, not the machine that
  traces it: `lax.platform_dependent` stages both scans (they differ only in `unroll`) and
  lowering keeps the one of the target platform (both, behind a platform switch, when
  exporting for several platforms)."""
  if jax.tree_util.tree_leaves(xs)[0].shape[0] == 1:
    carry, y = step(carry, jax.tree_util.tree_map(lambda a: a[0], xs))
    return carry, jax.tree_util.tree_map(lambda a: a[None], y)
  scan = lambda unroll: lambda c, x: lax.scan(step, c, x, reverse=reverse, unroll=unroll)
  if block_scan == 'auto':
    return lax.platform_dependent(carry, xs, cpu=scan(scan_unroll('unrolled')),
                                  default=scan(scan_unroll('rolled')))
  return scan(scan_unroll(block_scan))(carry, xs)


def _coupling_key(key, j):
  """The dropout key of coupling j of a step: the step's key, folded with j after the first."""
  return key if j == 0 else jax.random.fold_in(key, j)


def _apply_f(f_module, params, stats, train, key):
  """u -> (F(u), batch_stats) with the given variables."""
  return lambda u: blocks.apply_bottleneck(
      f_module, {'params': params, 'batch_stats': stats}, u, train, key)


def _forward_scan(specs, f_module, train, mode, params, stats, pair, keys, block_scan):
  def step(pair, xs):
    p, s, key = xs
    new_stats = []
    for j, spec in enumerate(specs):
      p_j, key_j = p[j], _coupling_key(key, j)
      if mode == 'reversible':   # not differentiated: see `_after`
        p_j, key_j = _after(pair, (p_j, key_j))
      pair, s_j = blocks.block_forward(spec, _apply_f(f_module, p_j, s[j], train, key_j), pair)
      if mode != 'reversible':
        pair = _materialized(pair)
      new_stats.append(s_j)
    return pair, tuple(new_stats)
  if mode == 'remat':
    step = jax.checkpoint(step)
  return _scan(step, pair, (params, stats, keys), block_scan)


def _materialized(pair):
  """`pair` unchanged, behind an optimization barrier: XLA computes it before anything
  that uses it and fuses nothing across it.

  Its transpose is a barrier on the cotangents: without it XLA's CPU fusion pulls
  each block's stream cotangent (elementwise BN backward terms of every later
  block) into every consumer and recomputes them there, a cost that grows with depth
  squared. XLA's CPU pipeline drops barriers unless compiled with
  `compiler_options.for_platform('cpu')`.
  """
  return lax.optimization_barrier(pair)


def _plus(x, zero):
  """x + zero for a float, integer or typed-key array."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = _plus(jax.random.key_data(x), zero)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  return x + zero.astype(x.dtype)


def _after(anchor, tree):
  """`tree` unchanged, but computed after `anchor` (an exact no-op XLA cannot see through).

  Adds to every leaf of `tree` a float32 0 computed from the first element of
  every leaf of `anchor`. With the block scans unrolled (CPU), XLA would
  otherwise schedule work that depends only on variables and keys (parameter
  slices, kernel layout changes, dropout masks) for all blocks at once, up front,
  or merge it with the forward pass's identical work: memory would grow with
  depth. It also keeps them from being merged (CSE) with the forward's copies.
  Used only where nothing differentiates through it (0 * inf would be nan).
  """
  leaves = jax.tree_util.tree_leaves(anchor)
  zero = 0 * sum(jnp.ravel(leaf)[0].astype(jnp.float32) for leaf in leaves)
  return jax.tree_util.tree_map(lambda x: _plus(x, zero), tree)


def _reversible_scan(specs, f_module, train, block_scan):
  """A custom_vjp function (params, stats, pair, keys) -> (pair, new_stats) over stacked steps."""

  @jax.custom_vjp
  def run(params, stats, pair, keys):
    return _forward_scan(specs, f_module, train, 'reversible', params, stats, pair, keys,
                         block_scan)

  def run_fwd(params, stats, pair, keys):
    out, new_stats = run(params, stats, pair, keys)
    return (out, new_stats), (params, stats, out, keys)

  def run_bwd(residuals, cotangents):
    params, stats, out, keys = residuals
    g_out, _ = cotangents  # running statistics carry no gradient

    def reverse_coupling(spec, p, s, key, pair, grads):
      # Each coupling's backward work starts once the gradient reaches it...
      p, key = _after(grads, (p, key))

      def f_of_params(p_, u):
        return _apply_f(f_module, p_, s, train, key)(u)[0]

      pair, grads, g_p = blocks.block_reverse_step(spec, f_of_params, p, pair, grads)
      # ... and ends with its results in memory: XLA would otherwise fuse the
      # rebuilt input (u1 = b - F(u2)) into its users, chaining every coupling's
      # F(u2) until the end of the stage, and put off the parameter gradients.
      return lax.optimization_barrier((pair, grads, g_p))

    def step(carry, xs):
      pair, grads = carry
      p, s, key = xs
      g_params = [None] * len(specs)
      for j in reversed(range(len(specs))):
        pair, grads, g_params[j] = reverse_coupling(
            specs[j], p[j], s[j], _coupling_key(key, j), pair, grads)
      return (pair, grads), tuple(g_params)

    (_, g_in), g_params = _scan(step, (out, g_out), (params, stats, keys), block_scan,
                                reverse=True)
    return g_params, None, g_in, None

  run.defvjp(run_fwd, run_bwd)
  return run


def _split(stacked):
  return (tuple(v['params'] for v in stacked), tuple(v['batch_stats'] for v in stacked))


def run_steps(mode: str, specs: Sequence[BlockSpec], f_module, stacked: Sequence[dict], pair,
              keys, train: bool, block_scan: str = 'auto') -> Tuple[tuple, tuple]:
  """Applies len(keys) alike steps, each the couplings `specs` in order.

  Args:
    mode: 'autodiff', 'remat' or 'reversible'.
    specs: one `BlockSpec` per coupling of a step.
    f_module: the (unbound) `Bottleneck` that every coupling's F instantiates.
    stacked: one {'params', 'batch_stats'} per coupling, each with a leading step axis.
    pair: the input pair, each half (N, H, W, C).
    keys: (num_steps, ...) dropout keys, one per step.
    train: batch statistics and dropout if True, running statistics otherwise.
    block_scan: 'auto', 'unrolled' or 'rolled' (`scan_unroll`).
  Returns:
    (output pair, one stacked batch_stats per coupling, after the steps' updates).
  """
  params, stats = _split(stacked)
  if mode == 'reversible':
    return _reversible_scan(tuple(specs), f_module, train, block_scan)(params, stats, pair, keys)
  return _forward_scan(tuple(specs), f_module, train, mode, params, stats, pair, keys, block_scan)


def invert_steps(specs: Sequence[BlockSpec], f_module, stacked: Sequence[dict], pair, keys,
                 train: bool, block_scan: str = 'auto'):
  """Inverse of `run_steps` (any mode): the steps and their couplings in reverse."""
  def step(pair, xs):
    p, s, key = xs
    for j in reversed(range(len(specs))):
      pair = blocks.block_inverse(
          specs[j], _apply_f(f_module, p[j], s[j], train, _coupling_key(key, j)), pair)
    return pair, None
  pair, _ = _scan(step, pair, (*_split(stacked), keys), block_scan, reverse=True)
  return pair


def run_blocks(mode, spec, f_module, stacked, pair, keys, train, block_scan='auto'):
  """`run_steps` for i-RevNet blocks (one coupling a step): returns (pair, stacked batch_stats)."""
  pair, (stats,) = run_steps(mode, (spec,), f_module, (stacked,), pair, keys, train, block_scan)
  return pair, stats


def invert_blocks(spec, f_module, stacked, pair, keys, train, block_scan='auto'):
  """Inverse of `run_blocks`."""
  return invert_steps((spec,), f_module, (stacked,), pair, keys, train, block_scan)
