"""BN's affine map, ReLU and a stride-1 k x k convolution as one Pallas kernel.

y = conv(relu(normalise(x, mean, inv_std, scale, bias)), kernel): x (N, H, W, C_in),
kernel (k, k, C_in, C_out), centred zero padding ('SAME'), no bias -> y (N, H, W, C_out)
in `dtype`. The activated input is formed tile by tile next to the matmuls and never
written to memory (`model.fused_kernel='pallas'`; opt-in, untimed on a GPU so far).

The kernel is an implicit GEMM over the pixels flattened to rows (N*H*W, C): each program
computes a (rows, C_out) tile of y; for each of the k*k taps and each chunk of input
channels it gathers the shifted rows of x, normalises and activates them (zero where the
tap falls into the padding), and adds their product with the tap's kernel slice to a
float32 (float64 for a float64 input) accumulator. Tiles are powers of 2 of at least 16,
edges masked: what Pallas's Triton lowering asks for. On CPU it runs in Pallas's
interpreter (tests only: slow); on GPU through Triton; Mosaic (TPU) is not supported.

Gradients are plain JAX (`jax.custom_vjp`): the forward keeps x, per-channel numbers and
the kernel; the backward recomputes the activation, takes the vjp of the plain
convolution, and in training continues with `bn_relu.input_gradients` (through the batch
statistics, synchronised over `axis_name`).
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from irevnet_jax.errors import UserError
from irevnet_jax.model import bn_relu, collectives

ROWS, CHANNELS = 64, 32   # default tile: output rows (pixels) x channels (in and out)


def conv(a, kernel, dtype, precision=None):
  """The plain stride-1 centred convolution: (N, H, W, C_in) x (k, k, C_in, C_out) ->
  (N, H, W, C_out) in `dtype` (as `nn.Conv` with `use_bias=False`)."""
  p = kernel.shape[0] // 2
  return lax.conv_general_dilated(a.astype(dtype), kernel.astype(dtype), (1, 1),
                                  ((p, p), (p, p)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  precision=precision)


def reference(x, mean, inv_std, scale, bias, kernel, dtype, precision=None):
  """What the kernel computes, in plain JAX: conv(relu(normalise(x)))."""
  return conv(bn_relu.activate(x, mean, inv_std, scale, bias, dtype), kernel, dtype, precision)


def _tile(size, cap):
  """A power of 2, at least 16 (Triton's smallest dot), at most max(cap, 16), >= size if it can."""
  return max(16, min(cap, pl.next_power_of_2(size)))


def _kernel(x_ref, stats_ref, w_ref, y_ref, *, image, dtype, precision, tiles):
  """One (rows, co) tile of y (M, C_out): x (M, C_in) with M = N*H*W, stats (4, C_in)
  (mean, inv_std, scale, bias), w (k, k, C_in, C_out) in `dtype`."""
  height, width = image
  m, c_in = x_ref.shape
  k, c_out = w_ref.shape[0], w_ref.shape[-1]
  rows, chunk, co = tiles
  r0, o0 = pl.program_id(0) * rows, pl.program_id(1) * co
  r, o = r0 + jnp.arange(rows), o0 + jnp.arange(co)
  h, w = (r // width) % height, r % width
  o_ok = o < c_out
  o = jnp.minimum(o, c_out - 1)
  total = jnp.zeros((rows, co), jnp.promote_types(dtype, jnp.float32))
  for i in range(k):
    for j in range(k):
      di, dj = i - k // 2, j - k // 2
      inside = ((r < m) & (h + di >= 0) & (h + di < height) & (w + dj >= 0)
                & (w + dj < width))[:, None]
      source = jnp.clip(r + di * width + dj, 0, m - 1)[:, None]

      def add_chunk(step, total, i=i, j=j, inside=inside, source=source):
        c = step * chunk + jnp.arange(chunk)
        c_ok = c < c_in
        c = jnp.minimum(c, c_in - 1)
        x = pltriton.load(x_ref.at[source, c[None, :]], mask=inside & c_ok[None, :], other=0)
        mean, inv_std, scale, bias = (stats_ref[q, c] for q in range(4))
        a = jnp.where(inside, bn_relu.activate(x, mean, inv_std, scale, bias, dtype), 0)
        taps = pltriton.load(w_ref.at[i, j, c[:, None], o[None, :]],
                             mask=c_ok[:, None] & o_ok[None, :], other=0)
        return total + jnp.dot(a.astype(dtype), taps, precision=precision,
                               preferred_element_type=total.dtype)

      total = lax.fori_loop(0, pl.cdiv(c_in, chunk), add_chunk, total)
  pltriton.store(y_ref.at[pl.ds(r0, rows), pl.ds(o0, co)], total.astype(dtype),
                 mask=(r < m)[:, None] & o_ok[None, :])


def _pallas(x, mean, inv_std, scale, bias, kernel, dtype, precision, tiles=None):
  """The kernel's forward (see the module docstring); `tiles`: (rows, in-channel chunk,
  out-channel tile), powers of 2 >= 16, None: `_tile`'s choice."""
  n, height, width, c_in = x.shape
  k, k_w, _, c_out = kernel.shape
  if k != k_w or k % 2 == 0:
    raise UserError(f'normalise_relu_conv: kernel of shape {kernel.shape} is not k x k with k '
                    f'odd (a centred "same" convolution); use e.g. (3, 3, C_in, C_out).')
  m = n * height * width
  tiles = tiles or (_tile(m, ROWS), _tile(c_in, CHANNELS), _tile(c_out, CHANNELS))
  stat = mean.dtype
  stats = jnp.stack([mean, inv_std, scale.astype(stat), bias.astype(stat)])
  backend = jax.default_backend()
  if backend not in ('cpu', 'gpu'):
    raise UserError(f"model.fused_kernel='pallas' runs on GPUs (Triton) and in Pallas's "
                    f"interpreter on CPU, not on {backend!r}: use model.fused_kernel='none'.")
  call = pl.pallas_call(
      functools.partial(_kernel, image=(height, width), dtype=dtype, precision=precision,
                        tiles=tiles),
      out_shape=jax.ShapeDtypeStruct((m, c_out), dtype),
      grid=(pl.cdiv(m, tiles[0]), pl.cdiv(c_out, tiles[2])),
      interpret=backend == 'cpu',
      compiler_params=pltriton.CompilerParams() if backend == 'gpu' else None,
      name='normalise_relu_conv')
  return call(x.reshape(m, c_in), stats, kernel.astype(dtype)).reshape(n, height, width, c_out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _normalise_relu_conv(x, mean, inv_std, scale, bias, kernel, dtype, precision):
  return _pallas(x, mean, inv_std, scale, bias, kernel, dtype, precision)


def _given_forward(x, mean, inv_std, scale, bias, kernel, dtype, precision):
  y = _pallas(x, mean, inv_std, scale, bias, kernel, dtype, precision)
  return y, (x, mean, inv_std, scale, bias, kernel)


def _given_backward(dtype, precision, residuals, g_y):
  plain = functools.partial(reference, dtype=dtype, precision=precision)
  return jax.vjp(plain, *residuals)[1](g_y)


_normalise_relu_conv.defvjp(_given_forward, _given_backward)


def normalise_relu_conv(x, mean, inv_std, scale, bias, kernel, *, dtype=None, precision=None):
  """conv(relu(normalise(x))) with given statistics (evaluation: the running ones), one kernel.

  x (N, H, W, C_in); mean, inv_std, scale, bias (C_in,); kernel (k, k, C_in, C_out), k odd
  -> (N, H, W, C_out) in `dtype` (None: x's). Differentiable in every argument (the
  backward is autodiff of `reference`).
  """
  dtype = jnp.dtype(x.dtype if dtype is None else dtype)
  return _normalise_relu_conv(x, mean, inv_std, scale, bias, kernel, dtype, precision)


def _train_forward(x, scale, bias, kernel, epsilon, dtype, precision, axis_name, ordered):
  mean, var, inv_std = bn_relu.batch_statistics(x, epsilon, axis_name, ordered)
  y = _pallas(x, mean, inv_std, scale, bias, kernel, dtype, precision)
  return (y, mean, var), (x, scale, bias, mean, inv_std, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _batch_norm_relu_conv(x, scale, bias, kernel, epsilon, dtype, precision, axis_name, ordered):
  return _train_forward(x, scale, bias, kernel, epsilon, dtype, precision, axis_name, ordered)[0]


def _train_backward(epsilon, dtype, precision, axis_name, ordered, residuals, cotangents):
  # The statistics outputs only feed the running averages: their cotangents are dropped.
  x, scale, bias, mean, inv_std, kernel = residuals
  a = bn_relu.activate(x, mean, inv_std, scale, bias, dtype)
  g_a, g_kernel = jax.vjp(functools.partial(conv, dtype=dtype, precision=precision),
                          a, kernel)[1](cotangents[0])
  g_x, g_scale, g_bias = bn_relu.input_gradients(residuals[:5], g_a, axis_name, ordered)
  return g_x, g_scale, g_bias, g_kernel


_batch_norm_relu_conv.defvjp(_train_forward, _train_backward)


def batch_norm_relu_conv(x, scale, bias, kernel, *, epsilon: float, dtype=None, precision=None,
                         axis_name=None, ordered=None):
  """conv(relu(BN(x))) with batch statistics in one kernel, and those statistics.

  x (N, H, W, C_in); scale, bias (C_in,); kernel (k, k, C_in, C_out), k odd. Returns
  (y (N, H, W, C_out) in `dtype` (None: x's), mean, var (C_in,) in
  `bn_relu.statistics_dtype(x.dtype)`, for the running averages, not differentiated).
  The statistics are `bn_relu.batch_moments`'s (over the devices of `axis_name`; `ordered`
  as `collectives.mean`); the backward keeps x, per-channel numbers and the kernel, and its
  gradients are autodiff's of BN, ReLU and `conv` to rounding.
  """
  dtype = jnp.dtype(x.dtype if dtype is None else dtype)
  ordered = collectives.is_ordered(ordered)
  return _batch_norm_relu_conv(x, scale, bias, kernel, float(epsilon), dtype, precision,
                               axis_name, ordered)
