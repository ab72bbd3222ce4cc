"""Metamers of image pairs: z* = metamer(z_a, z_b), x* = invert(z*), and how far x* is
from its targets; the numbers of the metamer figure and report.

For each pair (a, b) of different classes: x* carries a's logits (the head cannot tell
it from a) and is the image whose representation is the closest to z_b that the head
allows (`metamers.metamer`). Distances are computed on the model's input.

In a bijective network forward(x*) = z* to float rounding, so x* has a's logits. In an
injective one (zero-padded channels: z has more values than x) z* need not be the
representation of any image; there a short optimisation follows: alternating
projections, z <- metamer(z_a, forward(invert(z))), each a solve in the head from the
last image's representation, until forward(x*)'s logits are within `REFINE_TARGET` of
a's or after `refine_steps` (the difference shrinks ~0.6x per step on a tiny model).
"""
import math

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from irevnet_jax.analysis import metamers
from irevnet_jax.analysis.progress import ProgressBar
from irevnet_jax.errors import UserError

TOLERANCE = 1e-3    # the goal for the logits' relative difference from a's
REFINE_TARGET = 1e-4   # where the injective networks' refinement stops


def make_pair_fn(net, max_iterations: int = 30, refine_steps: int = 30):
  """A jitted fn(variables, x_a, x_b) -> dict of per-pair arrays (P leading):

  'x_star' (P, H, W, C), 'logits_a' / 'logits_b' / 'logits_star' (P, K) (the last from
  forward(x*)), 'head_rel_error' (the head's logits of z* vs a's), 'z_roundtrip'
  ||forward(x*)'s z - z*|| / ||z*||, 'z_distance' ||z* - z_b||, 'z_ab' ||z_a - z_b||,
  'switched_on', 'switched_off', 'iterations', 'on_b_pattern', 'null_a' / 'null_b'
  (null_energy dicts), 'refine_steps' (injective networks: the module docstring; the
  units, iterations and pattern are then those of the last solve).
  """
  if not net.invertible:
    raise UserError(f'Metamers need an invertible network; {type(net).__name__} has '
                    f'net.invertible == False.')
  injective = math.prod(net.z_shape) > math.prod(net.input_shape)

  def fn(variables, x_a, x_b):
    p = x_a.shape[0]
    flat = lambda a: a.reshape(p, -1)
    logits, z = net.forward(variables, jnp.concatenate([x_a, x_b]))
    z_a, z_b = z[:p], z[p:]

    def solve(z_from):
      m = metamers.metamer(net, variables, z_a, z_from, max_iterations)
      x_star = net.invert(variables, m.z)
      return (m, x_star, *net.forward(variables, x_star))

    def going(state):
      _, _, logits_star, _, i = state
      error = jnp.max(jnp.linalg.norm(logits_star - logits[:p], axis=1)
                      / jnp.linalg.norm(logits[:p], axis=1))
      return (error > REFINE_TARGET) & (i < refine_steps)

    state = (*solve(z_b), jnp.asarray(0))
    if injective and refine_steps:
      state = jax.lax.while_loop(going, lambda s: (*solve(s[3]), s[4] + 1), state)
    m, x_star, logits_star, z_again, steps = state
    head = metamers.head_of(net, variables)
    return {
        'x_star': x_star, 'logits_a': logits[:p], 'logits_b': logits[p:],
        'logits_star': logits_star, 'head_rel_error': m.rel_error,
        'z_roundtrip': (jnp.linalg.norm(flat(z_again - m.z), axis=1)
                        / jnp.linalg.norm(flat(m.z), axis=1)),
        'z_distance': jnp.linalg.norm(flat(m.z - z_b), axis=1),
        'z_ab': jnp.linalg.norm(flat(z_a - z_b), axis=1),
        'switched_on': m.switched_on, 'switched_off': m.switched_off,
        'iterations': m.iterations, 'on_b_pattern': m.on_b_pattern,
        'refine_steps': jnp.full((p,), steps),
        'null_a': metamers.null_energy(head, z_a), 'null_b': metamers.null_energy(head, z_b)}
  return jax.jit(fn)


def _rel(a, b):
  return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)


def compute(net, variables, x_a, x_b, labels_a, labels_b, chunk: int = 8,
            max_iterations: int = 30, refine_steps: int = 30):
  """Metamers of the pairs (x_a[i], x_b[i]) in chunks of `chunk` pairs, with a progress
  line. Returns (x_star (P, H, W, C) host array, result dict: 'pairs' (one dict per
  pair), 'summary', 'null_energy' (means over the 2P images))."""
  fn = make_pair_fn(net, max_iterations, refine_steps)
  outs = []
  logging.info('Metamers of %d pairs, %d per call (the first call compiles the solve, '
               'invert and forward).', len(x_a), min(chunk, len(x_a)))
  progress = ProgressBar(len(x_a), 'metamers')
  for start in range(0, len(x_a), chunk):
    sl = slice(start, start + chunk)
    outs.append(jax.device_get(fn(variables, jnp.asarray(x_a[sl]), jnp.asarray(x_b[sl]))))
    progress.update(len(x_a[sl]))
  progress.close()
  out = jax.tree_util.tree_map(lambda *a: np.concatenate(a), *outs)
  x_a, x_b = np.asarray(x_a, np.float64), np.asarray(x_b, np.float64)
  x_star = np.asarray(out['x_star'])
  flat = lambda a: a.reshape(len(a), -1)
  rms = lambda d: np.sqrt(np.mean(np.square(flat(d)), axis=1))
  to_a, to_b, ab = rms(x_star - x_a), rms(x_star - x_b), rms(x_a - x_b)
  logits_error = _rel(out['logits_star'], out['logits_a'])
  pred_a, pred_star = out['logits_a'].argmax(-1), out['logits_star'].argmax(-1)
  pairs = []
  for i in range(len(x_a)):
    pairs.append({
        'label_a': int(labels_a[i]), 'label_b': int(labels_b[i]),
        'predicted_a': int(pred_a[i]), 'predicted_b': int(out['logits_b'][i].argmax()),
        'predicted_star': int(pred_star[i]),
        'classified_as_a': bool(pred_star[i] == pred_a[i]),
        'classified_as_label_a': bool(pred_star[i] == labels_a[i]),
        'logits_rel_error': float(logits_error[i]),
        'head_rel_error': float(out['head_rel_error'][i]),
        'z_roundtrip_rel_error': float(out['z_roundtrip'][i]),
        'pixel_rms_to_a': float(to_a[i]), 'pixel_rms_to_b': float(to_b[i]),
        'pixel_rms_a_b': float(ab[i]),
        'z_distance_to_b': float(out['z_distance'][i]), 'z_distance_a_b': float(out['z_ab'][i]),
        'units_switched_on': int(out['switched_on'][i]),
        'units_switched_off': int(out['switched_off'][i]),
        'newton_iterations': int(out['iterations'][i]),
        'on_b_pattern': bool(out['on_b_pattern'][i]),
        'refine_steps': int(out['refine_steps'][i])})
  on_b = sum(p['on_b_pattern'] for p in pairs)
  summary = {
      'pairs': len(pairs),
      'method': (f'exact solve in the head (convex QP, dual Newton): {on_b} of {len(pairs)} '
                 f'pairs on b\'s ReLU pattern (z* the closest with a\'s logits), the others '
                 f'the convex relaxation (head units switched on)'
                 + (f'; then up to {max(p["refine_steps"] for p in pairs)} alternating '
                    f'projections onto the images\' representations (injective network)'
                    if any(p['refine_steps'] for p in pairs) else '')),
      'on_b_pattern': on_b / len(pairs),
      'max_logits_rel_error': float(logits_error.max()),
      'max_head_rel_error': float(out['head_rel_error'].max()),
      'within_tolerance': float(np.mean(logits_error <= TOLERANCE)),
      'tolerance': TOLERANCE,
      'classified_as_a': float(np.mean([p['classified_as_a'] for p in pairs])),
      'classified_as_label_a': float(np.mean([p['classified_as_label_a'] for p in pairs])),
      'closer_to_b': float(np.mean(to_b < to_a)),
      'median_pixel_rms_to_b': float(np.median(to_b)),
      'median_pixel_rms_to_a': float(np.median(to_a)),
      'median_z_distance_ratio': float(np.median(out['z_distance'] / out['z_ab'])),
      'max_z_roundtrip_rel_error': float(out['z_roundtrip'].max())}
  both = {k: np.concatenate([out['null_a'][k], out['null_b'][k]]) for k in out['null_a']}
  null = {k: float(np.mean(v)) for k, v in both.items()}
  return x_star, {'pairs': pairs, 'summary': summary, 'null_energy': null}


def summary_line(result: dict) -> str:
  """One report line of a `compute` result."""
  s, n = result['summary'], result['null_energy']
  return (f'Metamers: {s["pairs"]} pairs; logits within {s["tolerance"]:.0e} of a\'s: '
          f'{100 * s["within_tolerance"]:.0f}% (max rel. difference '
          f'{s["max_logits_rel_error"]:.1e}); classified as a: '
          f'{100 * s["classified_as_a"]:.0f}% (as a\'s label: '
          f'{100 * s["classified_as_label_a"]:.0f}%); closer to b than to a in pixels: '
          f'{100 * s["closer_to_b"]:.0f}% (median RMS to b {s["median_pixel_rms_to_b"]:.3f}, '
          f'to a {s["median_pixel_rms_to_a"]:.3f}); ||z*-z_b||/||z_a-z_b|| median '
          f'{s["median_z_distance_ratio"]:.3f}; on b\'s ReLU pattern: '
          f'{100 * s["on_b_pattern"]:.0f}%; energy of z in the head\'s null space '
          f'{100 * n["z"]:.1f}% (of relu(bn(z)): {100 * n["u"]:.1f}%).')
