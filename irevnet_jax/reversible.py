"""Running a stack of alike blocks in one of three backprop modes.

- 'autodiff': a `lax.scan` over the stacked block variables; JAX stores every
  block's activations for the backward pass.
- 'remat': the same scan with `jax.checkpoint` around each block: only block
  inputs are stored, block internals are recomputed.
- 'reversible': a `jax.custom_vjp` around the scan that stores only the stack's
  output. The backward pass walks the blocks in reverse and rebuilds each
  block's input from its output with one evaluation of F, whose vjp also gives
  the gradients (`blocks.block_reverse_step`).

Every mode takes and returns the same pytrees, so a parameter tree trained in
one mode runs in any other. Running BN statistics come out of the forward pass
only: the backward pass recomputes F with the same batch statistics (the
inputs it rebuilds are the same) and discards its updates. Dropout masks are
replayed from the per-block keys.
"""
import jax
import jax.numpy as jnp
from jax import lax

from irevnet_jax import blocks


# None: `scan_unroll` decides by backend; True or an int forces it (e.g. to inspect the
# rolled program's memory on a CPU: benchmarks/memory.py --rolled).
UNROLL = None


def scan_unroll():
  """How far `lax.scan` over blocks unrolls: fully on CPU, not at all elsewhere.

  XLA's CPU backend runs convolution gradients inside a while loop far slower
  than straight-line code (inside the loop it keeps the transposed kernel's
  layout, 01oi, and falls back to a naive convolution): a cifar10 grad step
  with 6-block stages took 4.3 s scanned and 0.31 s unrolled. On GPU/TPU the
  rolled scan keeps one compiled body however deep the stage (short compiles
  for 100-block models). Unrolled, 'reversible' still saves its memory, but
  XLA merges 'remat''s recomputation away on CPU.
  """
  if UNROLL is not None:
    return UNROLL
  return True if jax.default_backend() == 'cpu' else 1


def _scan(step, carry, xs, reverse=False):
  """`lax.scan`, except that a single block runs unscanned: a stage's leading block
  may change the pair's shape, which a scan carry cannot."""
  if jax.tree_util.tree_leaves(xs)[0].shape[0] == 1:
    carry, y = step(carry, jax.tree_util.tree_map(lambda a: a[0], xs))
    return carry, jax.tree_util.tree_map(lambda a: a[None], y)
  return lax.scan(step, carry, xs, reverse=reverse, unroll=scan_unroll())


def _bound_f(f_module, variables, train, key):
  return lambda u: blocks.apply_bottleneck(f_module, variables, u, train, key)


def _forward_scan(spec, f_module, train, checkpoint, params, stats, pair, keys):
  def step(pair, xs):
    p, s, k = xs
    return blocks.block_forward(spec, _bound_f(f_module, {'params': p, 'batch_stats': s}, train, k),
                                pair)
  if checkpoint:
    step = jax.checkpoint(step)
  return _scan(step, pair, (params, stats, keys))


def _zero_after(tree):
  """A float32 0 that XLA cannot know is 0 and that depends on every leaf of `tree`."""
  return 0 * sum(jnp.ravel(leaf)[0].astype(jnp.float32) for leaf in jax.tree_util.tree_leaves(tree))


def _plus(x, zero):
  """x + zero for a float, integer or typed-key array: x, computed after `zero`'s inputs."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = _plus(jax.random.key_data(x), zero)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  return x + zero.astype(x.dtype)


def _reversible_scan(spec, f_module, train):
  """A custom_vjp function (params, stats, pair, keys) -> (pair, new_stats) over stacked blocks."""

  @jax.custom_vjp
  def run(params, stats, pair, keys):
    return _forward_scan(spec, f_module, train, False, params, stats, pair, keys)

  def run_fwd(params, stats, pair, keys):
    out, new_stats = run(params, stats, pair, keys)
    return (out, new_stats), (params, stats, out, keys)

  def run_bwd(residuals, cotangents):
    params, stats, out, keys = residuals
    g_out, _ = cotangents  # running statistics carry no gradient

    def step(carry, xs):
      pair, grads = carry
      p, s, k = xs
      # Exact no-ops that keep each block's backward step in one piece once a scan
      # is unrolled (CPU), where XLA drops optimization barriers without ordering
      # anything. Without them XLA merges the replayed dropout masks with the
      # forward's (keeping every block's mask alive) and puts off the parameter
      # gradients, needed only at the end, holding every block's F residuals:
      # memory would grow with depth again. Costs one scalar per leaf.
      k = _plus(k, _zero_after(grads))

      def f_of_params(p_, u):
        return blocks.apply_bottleneck(f_module, {'params': p_, 'batch_stats': s}, u, train, k)[0]

      (u1, u2), grads, g_p = blocks.block_reverse_step(spec, f_of_params, p, pair, grads)
      return ((_plus(u1, _zero_after(g_p)), u2), grads), g_p

    (_, g_in), g_params = _scan(step, (out, g_out), (params, stats, keys), reverse=True)
    return g_params, None, g_in, None

  run.defvjp(run_fwd, run_bwd)
  return run


def run_blocks(mode, spec, f_module, stacked, pair, keys, train):
  """Applies len(keys) alike blocks whose variables are stacked on axis 0.

  Args:
    mode: 'autodiff', 'remat' or 'reversible'.
    spec: the `BlockSpec` shared by the blocks.
    f_module: their (unbound) `Bottleneck`.
    stacked: {'params', 'batch_stats'} with a leading block axis.
    pair: the input pair, each half (N, H, W, C).
    keys: (num_blocks, ...) dropout keys, one per block.
    train: batch statistics and dropout if True, running statistics otherwise.
  Returns:
    (output pair, stacked batch_stats after the blocks' updates).
  """
  params, stats = stacked['params'], stacked['batch_stats']
  if mode == 'reversible':
    return _reversible_scan(spec, f_module, train)(params, stats, pair, keys)
  return _forward_scan(spec, f_module, train, mode == 'remat', params, stats, pair, keys)


def invert_blocks(spec, f_module, stacked, pair, keys, train):
  """Inverse of `run_blocks` (any mode): walks the stacked blocks in reverse."""
  def step(pair, xs):
    p, s, k = xs
    return blocks.block_inverse(
        spec, _bound_f(f_module, {'params': p, 'batch_stats': s}, train, k), pair), None
  pair, _ = _scan(step, pair, (stacked['params'], stacked['batch_stats'], keys), reverse=True)
  return pair
