"""Metamers and the head's null space (irevnet_jax/analysis/metamers.py, metamer_pairs.py)
on a tiny bijective model with random variables, and `experiments.metamers` on a run
directory, local and gs://."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import irevnet_jax
from irevnet_jax.analysis import metamer_pairs, metamers, plots
from model_utils import FAST_COMPILE, random_variables, rel_error, tiny_config


@pytest.fixture(scope='module')
def model():
  """A bijective tiny net (z 2x2x32, 5 classes), its variables, 8 images and their
  (logits, z): pairs are (x[:4], x[4:])."""
  net = irevnet_jax.build(tiny_config(widths=(4, 16)))
  variables = random_variables(net, seed=3)
  x = jax.random.uniform(jax.random.PRNGKey(1), (8, *net.input_shape), minval=-1.0)
  forward = jax.jit(net.forward, compiler_options=FAST_COMPILE)
  logits, z = forward(variables, x)
  return {'net': net, 'variables': variables, 'x': x, 'logits': logits, 'z': z,
          'forward': forward, 'invert': jax.jit(net.invert, compiler_options=FAST_COMPILE),
          'metamer': jax.jit(lambda v, a, b: metamers.metamer(net, v, a, b),
                             compiler_options=FAST_COMPILE)}


def test_head_is_the_networks_head(model):
  head = metamers.head_of(model['net'], model['variables'])
  assert rel_error(metamers.head_logits(head, model['z']), model['logits']) < 1e-6


def test_metamer_has_as_logits_and_inverts_exactly(model):
  z, logits = model['z'], model['logits']
  m = model['metamer'](model['variables'], z[:4], z[4:])
  for i in range(4):
    assert rel_error(m.logits[i], logits[i]) < 1e-5          # the network's logits of a
    assert float(m.rel_error[i]) < 1e-5
  assert not np.allclose(m.logits, logits[4:], atol=1e-2)    # and not b's
  assert np.all(np.asarray(m.distance) > 0)
  # x* = invert(z*) is an image whose representation is z* and whose logits are a's.
  x_star = model['invert'](model['variables'], m.z)
  logits_star, z_again = model['forward'](model['variables'], x_star)
  assert rel_error(z_again, m.z) < 1e-5
  assert rel_error(logits_star, logits[:4]) < 1e-5


def test_metamer_is_a_stationary_point_of_the_distance(model):
  """Among z with a's logits and z*'s ReLU pattern, none is nearer z_b to first order:
  z* - z_b, on the units active in z*, lies in the row space of the head's Jacobian."""
  head = metamers.head_of(model['net'], model['variables'])
  z = model['z']
  m = model['metamer'](model['variables'], z[:4], z[4:])
  for i in range(4):
    active = np.asarray(m.z[i] * head.scale + head.shift > 1e-6).ravel()
    jac = np.asarray(jax.jacobian(lambda v: metamers.head_logits(head, v))(m.z[i]))
    jac = jac.reshape(jac.shape[0], -1)[:, active].astype(np.float64)
    move = np.asarray(m.z[i] - z[4 + i], np.float64).ravel()[active]
    coef, *_ = np.linalg.lstsq(jac.T, move, rcond=None)
    assert np.linalg.norm(jac.T @ coef - move) < 1e-4 * np.linalg.norm(move)


def test_on_b_pattern_is_the_linear_minimum_norm_correction(model):
  """With a target a hair away from b's logits, no unit crosses zero: z* is z_b plus
  the minimum-norm solution of J dz = logits_a - logits_b (J: the head's Jacobian)."""
  head = metamers.head_of(model['net'], model['variables'])
  z_b = model['z'][4]
  z_a = z_b + 1e-3 * jax.random.normal(jax.random.PRNGKey(5), z_b.shape)
  m = metamers.metamer(model['net'], model['variables'], z_a, z_b)
  assert bool(m.on_b_pattern) and int(m.switched_on) == 0 and int(m.switched_off) == 0
  jac = np.asarray(jax.jacobian(lambda v: metamers.head_logits(head, v))(z_b), np.float64)
  jac = jac.reshape(jac.shape[0], -1)
  target = np.asarray(metamers.head_logits(head, z_a) - metamers.head_logits(head, z_b))
  expected = np.linalg.pinv(jac) @ target
  assert rel_error(np.asarray(m.z - z_b).ravel(), expected) < 1e-3


def test_null_space_projectors(model):
  head = metamers.head_of(model['net'], model['variables'])
  a = jax.random.normal(jax.random.PRNGKey(2), (3, *model['net'].z_shape))
  b = jax.random.normal(jax.random.PRNGKey(3), a.shape)
  null, row = metamers.project_null(head, a), metamers.project_row(head, a)
  assert rel_error(metamers.project_null(head, null), null) < 1e-5       # idempotent
  assert rel_error(metamers.project_row(head, row), row) < 1e-5
  assert rel_error(null + row, a) < 1e-6
  linear = lambda v: jnp.matmul(jnp.mean(v, axis=(-3, -2)), head.kernel)
  assert float(jnp.abs(linear(null)).max()) < 1e-5 * float(jnp.abs(linear(a)).max())
  # Orthogonal to the head's row space: to every row of pool + linear, and to P_row b.
  rows = jnp.broadcast_to(head.kernel.T[:, None, None, :] / 4, (head.kernel.shape[1], *a.shape[1:]))
  assert float(jnp.abs(jnp.einsum('nhwc,khwc->nk', null, rows)).max()) < 1e-5
  assert abs(float(jnp.vdot(null, metamers.project_row(head, b)))) < 1e-4
  shares = metamers.null_energy(head, a)
  expected = jnp.sum(null ** 2, axis=(1, 2, 3)) / jnp.sum(a ** 2, axis=(1, 2, 3))
  assert rel_error(shares['z'], expected) < 1e-5
  assert np.all((shares['z_pool'] <= shares['z']) & (shares['z'] <= 1))


def test_jit_and_vmap_give_the_batched_result(model):
  z, net, variables = model['z'], model['net'], model['variables']
  batched = model['metamer'](variables, z[:4], z[4:])
  one = jax.jit(jax.vmap(lambda a, b: metamers.metamer(net, variables, a, b)),
                compiler_options=FAST_COMPILE)(z[:4], z[4:])
  single = metamers.metamer(net, variables, z[1], z[5])
  # The same solves; compiled apart, rounding may stop Newton a step apart (tolerance 1e-5).
  assert rel_error(one.z, batched.z) < 1e-4 and float(one.rel_error.max()) < 1e-5
  assert rel_error(single.z, batched.z[1]) < 1e-4 and float(single.rel_error) < 1e-5
  with pytest.raises(ValueError, match='one shape'):
    metamers.metamer(net, variables, z[:2], z[:3])


def test_pair_numbers(model):
  x = np.asarray(model['x'])
  x_star, result = metamer_pairs.compute(model['net'], model['variables'], x[:4], x[4:],
                                         np.arange(4), np.arange(4, 8), chunk=3)
  s = result['summary']
  assert s['pairs'] == 4 and s['within_tolerance'] == 1.0 and s['max_logits_rel_error'] < 1e-4
  assert s['classified_as_a'] == 1.0            # a's logits, so a's predicted class
  for i, p in enumerate(result['pairs']):
    rms = np.sqrt(np.mean((x_star[i] - x[4 + i]) ** 2))
    assert p['pixel_rms_to_b'] == pytest.approx(rms, rel=1e-5)
    assert p['predicted_star'] == p['predicted_a']
  assert 0 < result['null_energy']['z'] < 1
  assert 'Metamers: 4 pairs' in metamer_pairs.summary_line(result)


def test_injective_network_is_refined_to_as_logits():
  """Zero-padded channels: z* is not any image's representation; the alternating
  projections bring forward(invert(z*))'s logits to a's."""
  net = irevnet_jax.build(tiny_config())          # stage 0 pads 8 -> 16 channels
  variables = random_variables(net, seed=1)
  x = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (4, *net.input_shape)))
  _, refined = metamer_pairs.compute(net, variables, x[:2], x[2:], [0, 1], [2, 3])
  assert refined['summary']['max_logits_rel_error'] <= metamer_pairs.REFINE_TARGET
  assert all(p['refine_steps'] > 0 for p in refined['pairs'])   # one solve was > 1e-4 off
  assert 'alternating projections' in refined['summary']['method']


def _save_run(workdir, net_config):
  from experiments.configs import digits as digits_config
  from irevnet_jax.run import checkpoints, run_config
  config = digits_config.get_config()
  config.model = net_config
  net = irevnet_jax.build(config.model)
  variables = random_variables(net, seed=4)
  run_config.write_config(workdir, config)
  ckpt = checkpoints.Checkpointer(workdir, keep=1, use_async=False)
  ckpt.save(0, {'params': variables['params'], 'batch_stats': variables['batch_stats'],
                'step': np.int32(0)})
  ckpt.close()


def _digits_model():
  c = irevnet_jax.presets.digits()
  c.blocks, c.strides, c.widths, c.bottleneck_mult, c.dropout_rate = (1, 1), (1, 2), (2, 8), 1, 0.0
  return c


@pytest.mark.parametrize('where', ['local', 'gcs'])
def test_command_writes_figure_and_numbers(where, tmp_path, request):
  import in_process  # pylint: disable=g-import-not-at-top
  from irevnet_jax.run import paths
  workdir = str(tmp_path / 'run') if where == 'local' else request.getfixturevalue('gcs') + '/run'
  _save_run(workdir, _digits_model())
  code, log = in_process.command('experiments.metamers', f'--workdir={workdir}',
                                 '--num_pairs=3')
  assert code == 0, log[-3000:]
  assert 'Metamers: 3 pairs' in log and 'metamers [' in log       # summary and progress
  out = os.path.join(str(tmp_path), 'out')
  os.makedirs(out)
  for name in ('metamers.png', 'metamers.json'):
    data = paths.epath.Path(paths.join(workdir, 'analysis', name)).read_bytes()
    with open(os.path.join(out, name), 'wb') as f:
      f.write(data)
  assert plots.read_png_size(os.path.join(out, 'metamers.png')) == plots.grid_size_px(3, 3)
  with open(os.path.join(out, 'metamers.json')) as f:
    result = json.load(f)
  assert len(result['pairs']) == 3 and result['summary']['max_logits_rel_error'] < 1e-3
  assert all(p['label_a'] != p['label_b'] for p in result['pairs'])
