"""Metamers and the head's null space: what an i-RevNet's classifier ignores.

Only the head loses information. In eval mode it is

    y = s * z + t            BN as an affine map per channel (running statistics)
    u = relu(y)
    logits = mean_HW(u) @ kernel + bias

so `pool + linear` is a linear map L(u) = mean_HW(u) @ kernel, and the only
non-linearity is the ReLU. A metamer of (a, b) is a representation z* whose logits are
a's while z* stays as close as possible to z_b; `net.invert(variables, z*)` is then an
image that the classifier cannot tell from a (Jacobsen et al., "Excessive Invariance
Causes Adversarial Vulnerability", ICLR 2019).

`metamer` solves this exactly as a convex quadratic programme in u. Moving a unit's
pre-activation y by dy moves z by dy / s, so the squared distance ||z - z_b||^2 is
sum_i (y_i - y_b,i)^2 / s_c^2. With u = relu(y):

    minimise  sum_i ((u_i - y_b,i)^2 - min(y_b,i, 0)^2) / s_c^2
    subject to  L(u) = L(u_a),   u >= 0

For units of b that stay off (u_i = 0, y_b,i <= 0) the term is 0 and z is unchanged;
for units on in u it is their exact squared move. `metamer` solves it twice:

- on b's pattern: units that b has off must stay off. Where this has a solution, the
  term is exact, and z* is the closest z to z_b with a's logits among all z whose head
  units b has off stay off;
- relaxed: every unit may switch on. Its term for a unit that b has off and z* switches
  on is (u - y_b)^2 - y_b^2, below the true cost (u - y_b)^2: a convex relaxation, always
  solvable (u_a is a solution), with exact logits but a z* that may not be the closest.

It keeps the nearer z* whose logits meet the tolerance (`on_b_pattern` says which).
Each programme is solved through its K-dimensional dual by a semi-smooth Newton method
with a line search (u(lam) = relu(y_b + s^2 * kernel @ lam / HW) on the units allowed);
the first step, from lam = 0, is the minimum-norm linear correction on b's active
units, exact when no unit crosses zero.

The head's null space: `project_row` / `project_null` are the orthogonal projectors
onto the row space of L (maps constant over HW whose channel vector lies in kernel's
column space) and its complement, for maps (..., H, W, C) of z's shape.

Every function is pure (jax.jit, jax.vmap); z's may be one example (H, W, C) or a
batch (N, H, W, C).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from irevnet_jax.errors import UserError
from irevnet_jax.model import norm

HIGHEST = jax.lax.Precision.HIGHEST


class Head(NamedTuple):
  """The eval-mode head of an i-RevNet as arrays: y = scale * z + shift per channel
  (C,), u = relu(y), logits = mean_HW(u) @ kernel (C, K) + bias (K,)."""
  scale: jax.Array
  shift: jax.Array
  kernel: jax.Array
  bias: jax.Array


class Metamer(NamedTuple):
  """One solve (a leading batch axis when z_a, z_b had one).

  z: z* (H, W, C). logits: the head's logits of z* (K,). target: a's logits.
  rel_error: ||logits - target|| / ||target||. distance: ||z* - z_b||.
  switched_on / switched_off: units whose ReLU is on in z* and off in z_b / the
  reverse. iterations: Newton steps taken. on_b_pattern: z* is the exact optimum over
  the z that keep b's inactive head units inactive (else: the convex relaxation's).
  """
  z: jax.Array
  logits: jax.Array
  target: jax.Array
  rel_error: jax.Array
  distance: jax.Array
  switched_on: jax.Array
  switched_off: jax.Array
  iterations: jax.Array
  on_b_pattern: jax.Array


def head_of(net, variables) -> Head:
  """The head of an i-RevNet's variables, in float32 (float64 in a float64 model)."""
  if not getattr(net, 'invertible', False):
    raise UserError(f'Metamers need an invertible i-RevNet; this net has '
                    f'net.invertible == False ({type(net.module).__name__}).')
  params, stats = variables['params'], variables['batch_stats']
  dtype = jnp.float64 if net.arch.dtype == 'float64' else jnp.float32
  bn = {k: jnp.asarray(v, dtype) for k, v in params['head_norm'].items()}
  mean = jnp.asarray(stats['head_norm']['mean'], dtype)
  var = jnp.asarray(stats['head_norm']['var'], dtype)
  scale = bn['scale'] * jax.lax.rsqrt(var + norm.EPSILON)
  return Head(scale=scale, shift=bn['bias'] - mean * scale,
              kernel=jnp.asarray(params['classifier']['kernel'], dtype),
              bias=jnp.asarray(params['classifier']['bias'], dtype))


def head_logits(head: Head, z):
  """The head's logits of z (..., H, W, C) -> (..., K), as the network computes them."""
  u = jax.nn.relu(z * head.scale + head.shift)
  return _linear(head, u) + head.bias


def _linear(head, u):
  """L(u) = mean_HW(u) @ kernel: (..., H, W, C) -> (..., K)."""
  return jnp.matmul(jnp.mean(u, axis=(-3, -2)), head.kernel, precision=HIGHEST)


def _column_projector(kernel):
  """The orthogonal projector (C, C) onto the column space of kernel (C, K)."""
  u, sv, _ = jnp.linalg.svd(kernel, full_matrices=False)
  keep = sv > sv[0] * max(kernel.shape) * jnp.finfo(kernel.dtype).eps
  basis = u * keep
  return jnp.matmul(basis, basis.T, precision=HIGHEST)


def project_row(head: Head, a):
  """Orthogonal projection of maps a (..., H, W, C) onto the row space of the head's
  pool + linear map: mean_HW(a) projected onto kernel's column space, broadcast over HW."""
  pooled = jnp.mean(a, axis=(-3, -2), keepdims=True)
  return jnp.broadcast_to(
      jnp.matmul(pooled, _column_projector(head.kernel), precision=HIGHEST), a.shape)


def project_null(head: Head, a):
  """a - project_row(head, a): the part of a that pool + linear maps to zero."""
  return a - project_row(head, a)


def null_energy(head: Head, z) -> dict:
  """Shares of energy in the head's null spaces, per example ((...) arrays):

  'z': ||P_null z||^2 / ||z||^2 of pool + linear applied to z itself;
  'u': the same for u = relu(bn(z)), what pool + linear actually sees;
  'z_pool' / 'u_pool': the part of it that pooling alone discards (the maps' variation
    over HW); the rest lies in the null space of the linear layer.
  """
  def shares(a):
    total = jnp.sum(jnp.square(a), axis=(-3, -2, -1))
    spatial = a - jnp.mean(a, axis=(-3, -2), keepdims=True)
    safe = jnp.where(total > 0, total, 1)
    return (jnp.sum(jnp.square(project_null(head, a)), axis=(-3, -2, -1)) / safe,
            jnp.sum(jnp.square(spatial), axis=(-3, -2, -1)) / safe)
  z_null, z_pool = shares(z)
  u_null, u_pool = shares(jax.nn.relu(z * head.scale + head.shift))
  return {'z': z_null, 'z_pool': z_pool, 'u': u_null, 'u_pool': u_pool}


def metamer(net, variables, z_a, z_b, max_iterations: int = 30,
            tolerance: float = 1e-5) -> Metamer:
  """z* with a's logits, as close to z_b as the head allows (see the module docstring).

  z_a, z_b: (H, W, C) or (N, H, W, C). Each solve stops when the relative logits error
  is below `tolerance` or after `max_iterations` Newton steps (check `rel_error`).
  """
  head = head_of(net, variables)

  def solve(a, b):
    relaxed = _solve(head, a, b, max_iterations, tolerance, on_b_pattern=False)
    on_b = _solve(head, a, b, max_iterations, tolerance, on_b_pattern=True)
    use = (on_b.rel_error <= tolerance) & (on_b.distance <= relaxed.distance)
    return jax.tree_util.tree_map(lambda x, y: jnp.where(use, x, y), on_b, relaxed)

  z_a, z_b = jnp.asarray(z_a, head.scale.dtype), jnp.asarray(z_b, head.scale.dtype)
  if z_a.shape != z_b.shape or z_a.ndim not in (3, 4):
    raise UserError(f'z_a {z_a.shape} and z_b {z_b.shape} must have one shape, '
                    f'(H, W, C) or (N, H, W, C), e.g. both from net.forward.')
  return solve(z_a, z_b) if z_a.ndim == 3 else jax.vmap(solve)(z_a, z_b)


def _solve(head, z_a, z_b, max_iterations, tolerance, on_b_pattern) -> Metamer:
  """One pair: the dual semi-smooth Newton iteration of the module docstring."""
  hw = z_b.shape[0] * z_b.shape[1]
  s2 = jnp.square(head.scale)
  y_b = z_b * head.scale + head.shift
  target_linear = _linear(head, jax.nn.relu(z_a * head.scale + head.shift))
  target = target_linear + head.bias
  target_norm = jnp.maximum(jnp.linalg.norm(target), jnp.finfo(y_b.dtype).tiny)
  inv_w = jnp.where(s2 > 0, 1 / jnp.where(s2 > 0, s2, 1), 0)   # 1 / s^2, 0 for s = 0
  off_b = jnp.square(jnp.minimum(y_b, 0))
  allowed = (y_b > 0) if on_b_pattern else jnp.ones(y_b.shape, bool)

  def units(lam):
    move = s2 * jnp.matmul(head.kernel, lam, precision=HIGHEST) / hw
    return jnp.where(allowed, jax.nn.relu(y_b + move), 0)

  def residual(u):
    return target_linear - _linear(head, u)

  def dual(lam):
    u = units(lam)
    cost = 0.5 * jnp.sum((jnp.square(u - y_b) - off_b) * inv_w)
    return cost + jnp.dot(lam, residual(u))

  steps = 0.5 ** jnp.arange(8, dtype=y_b.dtype)

  def newton(state):
    lam, _, i = state
    u = units(lam)
    r = residual(u)
    weight = s2 * jnp.sum(u > 0, axis=(0, 1)) / (hw * hw)               # (C,)
    hessian = jnp.matmul(head.kernel.T * weight, head.kernel, precision=HIGHEST)
    ridge = 1e-7 * jnp.trace(hessian) / hessian.shape[0] + jnp.finfo(y_b.dtype).tiny
    step = jnp.linalg.solve(hessian + ridge * jnp.eye(hessian.shape[0], dtype=y_b.dtype), r)
    values = jax.vmap(lambda t: dual(lam + t * step))(steps)
    lam = lam + steps[jnp.argmax(values)] * step
    return lam, jnp.linalg.norm(residual(units(lam))) / target_norm, i + 1

  def going(state):
    _, error, i = state
    return (error > tolerance) & (i < max_iterations)

  lam0 = jnp.zeros_like(head.bias)
  error0 = jnp.linalg.norm(residual(units(lam0))) / target_norm
  lam, _, iterations = jax.lax.while_loop(going, newton, (lam0, error0, jnp.asarray(0)))
  u = units(lam)
  y = jnp.where(u > 0, u, jnp.minimum(y_b, 0))
  z = z_b + jnp.where(s2 > 0, (y - y_b) / jnp.where(s2 > 0, head.scale, 1), 0)
  logits = head_logits(head, z)
  return Metamer(
      z=z, logits=logits, target=target,
      rel_error=jnp.linalg.norm(logits - target) / target_norm,
      distance=jnp.linalg.norm(z - z_b),
      switched_on=jnp.sum((u > 0) & (y_b <= 0)), switched_off=jnp.sum((u <= 0) & (y_b > 0)),
      iterations=iterations, on_b_pattern=jnp.asarray(on_b_pattern))
