"""Tests of irevnet_jax.analysis and experiments/analyze.py on a tiny trained i-RevNet.

A module fixture trains a 4-block i-RevNet on scikit-learn's digits for a few
dozen SGD steps, writes it as a training run (config.json + checkpoint), and
runs `python -m experiments.analyze` on it once (in this process: tests/in_process.py); the tests check the report's
numbers against direct computations and the PNGs against their expected sizes.
"""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import irevnet_jax
from irevnet_jax.model import blocks, presets
from irevnet_jax.data import input_pipeline
from irevnet_jax.analysis import (features, interpolation, pca, pipeline, plots, probes,
                                  reconstruction)

TRAIN_STEPS = 40
OPTIONS = dict(num_images=5, num_pairs=2, num_steps=5, every_k_blocks=1)


def tiny_model():
  """8x8x1 -> psi(2) 4x4x4 -> stage 0 (2 blocks, bijective) -> stage 1 (2 blocks, stride 2)
  -> z 2x2x16: every half carries data (no zero-padded half)."""
  c = presets.digits()
  c.init_ds = 2
  c.blocks = (2, 2)
  c.strides = (1, 2)
  c.widths = (2, 8)
  c.bottleneck_mult = 1
  c.dropout_rate = 0.0
  return c


def train_tiny(net, source, steps=TRAIN_STEPS, batch=64):
  x0 = jnp.zeros((1, *net.input_shape))
  variables = net.init(jax.random.PRNGKey(0), x0)
  opt = optax.sgd(0.1, momentum=0.9)
  opt_state = opt.init(variables['params'])

  @jax.jit
  def step(variables, opt_state, x, y):
    def loss_fn(params):
      (logits, _), state = net.forward({'params': params, 'batch_stats': variables['batch_stats']},
                                       x, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state
    (_, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables['params'])
    updates, opt_state = opt.update(grads, opt_state, variables['params'])
    params = optax.apply_updates(variables['params'], updates)
    return {'params': params, 'batch_stats': state['batch_stats']}, opt_state

  batches = input_pipeline.normalized(source.train_batches(batch, 0, 1, seed=0, start_step=0),
                                      source)
  for _, b in zip(range(steps), batches):
    variables, opt_state = step(variables, opt_state, b['image'], b['label'])
  return jax.device_get(variables)


def all_eval(source):
  xs, ys = [], []
  for b in input_pipeline.normalized(source.eval_batches(256, 0, 1), source):
    keep = b['mask'] > 0
    xs.append(b['image'][keep])
    ys.append(b['label'][keep])
  return np.concatenate(xs), np.concatenate(ys)


def all_train(source):
  xs, ys = [], []
  for _, b in zip(range(-(-source.num_train_examples // 256)), input_pipeline.normalized(
      source.train_batches(256, 0, 1, seed=0, start_step=0), source)):
    xs.append(b['image'])
    ys.append(b['label'])
  n = source.num_train_examples
  return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A tiny trained run in a workdir, analysed once by experiments.analyze."""
  from experiments.configs import digits as digits_config
  from irevnet_jax.run import checkpoints, run_config
  from irevnet_jax.data import input_pipeline
  config = digits_config.get_config()
  config.model = tiny_model()
  source = input_pipeline.get_source(config.dataset, config.model.input_shape)
  net = irevnet_jax.build(config.model)
  variables = train_tiny(net, source)
  workdir = str(tmp_path_factory.mktemp('run'))
  run_config.write_config(workdir, config)
  ckpt = checkpoints.Checkpointer(workdir, keep=1, use_async=False)
  ckpt.save(TRAIN_STEPS, {'params': variables['params'],
                          'batch_stats': variables['batch_stats'],
                          'step': np.int32(TRAIN_STEPS)})
  ckpt.close()
  import in_process  # pylint: disable=g-import-not-at-top
  flags = [f'--{k}={v}' for k, v in OPTIONS.items()]
  code, log = in_process.command('experiments.analyze', f'--workdir={workdir}',
                                 '--batch_size=128', *flags)
  assert code == 0, log[-4000:]
  out = os.path.join(workdir, 'analysis')
  with open(os.path.join(out, 'report.json')) as f:
    report = json.load(f)
  return {'net': net, 'variables': variables, 'source': source, 'out': out, 'report': report,
          'eval': all_eval(source), 'train': all_train(source), 'log': log}


def direct_z(run, x):
  _, z = run['net'].forward(run['variables'], jnp.asarray(x))
  return np.asarray(z).reshape(len(x), -1)


def test_reconstruction_numbers_equal_direct_computation(run):
  net, variables, source = run['net'], run['variables'], run['source']
  # The same jitted program and batches as the run: the numbers agree exactly.
  fn = features.make_batch_fn(net, features.irevnet_depths(net.arch, every_k=1),
                              with_inverse=True)
  x, x_hat = [], []
  for b in input_pipeline.normalized(source.eval_batches(128, 0, 1), source):
    keep = b['mask'] > 0
    x.append(b['image'][keep])
    x_hat.append(np.asarray(fn(variables, b['image'])['x_hat'])[keep])
  x = np.concatenate(x).astype(np.float64)
  err = np.concatenate(x_hat) - x
  rec = run['report']['reconstruction']
  assert rec['examples'] == len(x) == source.num_eval_examples
  np.testing.assert_allclose(rec['rel_l2_error'], np.linalg.norm(err) / np.linalg.norm(x),
                             rtol=1e-12)
  np.testing.assert_allclose(rec['max_abs_error'], np.abs(err).max(), rtol=1e-12)
  np.testing.assert_allclose(rec['psnr_db'], 10 * np.log10(
      (x.max() - x.min()) ** 2 / np.mean(err ** 2)), rtol=1e-12)
  # Plain net.invert(net.forward(x)) on the whole split agrees up to float32 rounding.
  direct = np.asarray(net.invert(variables, net.forward(variables, x)[1]), np.float64) - x
  assert rec['rel_l2_error'] < 1e-5 and np.linalg.norm(direct) / np.linalg.norm(x) < 1e-5
  np.testing.assert_allclose(rec['max_abs_error'], np.abs(direct).max(), atol=1e-6)


def test_reconstruction_stats_match_numpy_exactly():
  rng = np.random.default_rng(0)
  x = rng.random((7, 4, 4, 2))
  x_hat = x + 1e-3 * rng.standard_normal(x.shape)
  stats = reconstruction.ReconstructionStats()
  for lo in range(0, 7, 3):        # batch by batch
    stats.update(x[lo:lo + 3], x_hat[lo:lo + 3])
  r = stats.result()
  err = x_hat - x
  np.testing.assert_allclose(r['rel_l2_error'], np.linalg.norm(err) / np.linalg.norm(x))
  np.testing.assert_allclose(r['max_abs_error'], np.abs(err).max())
  np.testing.assert_allclose(r['psnr_db'],
                             10 * np.log10((x.max() - x.min()) ** 2 / np.mean(err ** 2)))
  per_image = [np.linalg.norm(e) / np.linalg.norm(a) for e, a in zip(err, x)]
  np.testing.assert_allclose(r['max_image_rel_error'], max(per_image))
  assert reconstruction.psnr(0.0, 1.0) == math.inf


def test_depth_features_are_the_networks_pairs(run):
  net, variables = run['net'], run['variables']
  x, _ = run['eval']
  x = x[:16]
  every = features.irevnet_depths(net.arch, every_k=1)
  assert [d.name for d in every] == ['input', 'stage0.block1', 'stage0', 'stage1.block1',
                                     'stage1']
  assert [d.blocks for d in every] == [0, 1, 2, 3, 4]
  out = features.make_batch_fn(net, every, with_inverse=True)(variables, x)
  stages = features.make_batch_fn(net, features.irevnet_depths(net.arch))(variables, x)
  f = [np.asarray(a) for a in out['features']]   # other XLA programs: equal up to rounding
  np.testing.assert_array_equal(f[0], x.reshape(16, -1))
  np.testing.assert_allclose(f[-1], direct_z(run, x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(f[2], np.asarray(stages['features'][1]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(f[4], np.asarray(stages['features'][2]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out['x_hat']), x, atol=1e-5)
  # The first block by hand: (x1, x2) -> (x2, F(x2) + x1) with the first F's variables.
  spec = net.arch.stages[0].first
  f_vars = {'params': variables['params']['stages_0']['first'],
            'batch_stats': variables['batch_stats']['stages_0']['first']}
  bottleneck = blocks.make_bottleneck(net.arch, spec)
  f_fn = lambda u: blocks.apply_bottleneck(bottleneck, f_vars, u, False, None)
  pair = irevnet_jax.model.ops.split(irevnet_jax.model.ops.psi(jnp.asarray(x), net.arch.init_ds))
  (a, b), _ = blocks.block_forward(spec, f_fn, pair)
  np.testing.assert_allclose(f[1], np.asarray(irevnet_jax.model.ops.merge(a, b)).reshape(16, -1),
                             rtol=1e-5, atol=1e-5)


def test_pooling_and_projection_shrink_big_maps():
  assert features.plan_reduction((8, 8, 32), 0, 4096) == (None, None)
  assert features.plan_reduction((8, 8, 32), 0, 600) == ((4, 4), None)      # 512 values
  assert features.plan_reduction((2, 2, 100), 0, 50) == ((1, 1), 50)
  assert features.plan_reduction((7, 5, 3), 3, 0) == ((3, 3), None)
  with pytest.raises(ValueError, match='pool_size'):
    features.plan_reduction((4, 4, 4), -1, 10)
  depths = [features.Depth('a', 0, (7, 5, 3), (3, 2)), features.Depth('b', 1, (2, 2, 100),
                                                                        (1, 1), 50)]
  rng = np.random.default_rng(0)
  maps = [rng.standard_normal((4, 7, 5, 3)).astype(np.float32),
          rng.standard_normal((4, 2, 2, 100)).astype(np.float32)]
  pooled, projected = features.reduce_fn(depths)(maps)
  assert pooled.shape == (4, depths[0].dim) and projected.shape == (4, 50)
  # Adaptive average pooling by brute force: bin i spans [floor(i n / k), ceil((i + 1) n / k)).
  expect = np.zeros((4, 3, 2, 3))
  for i in range(3):
    for j in range(2):
      rows = slice(i * 7 // 3, -(-(i + 1) * 7 // 3))
      cols = slice(j * 5 // 2, -(-(j + 1) * 5 // 2))
      expect[:, i, j] = maps[0][:, rows, cols].mean(axis=(1, 2))
  np.testing.assert_allclose(pooled, expect.reshape(4, -1), atol=1e-5)
  # The projection is linear in the globally pooled channels.
  np.testing.assert_allclose(projected, maps[1].mean(axis=(1, 2)) @ features._projection(
      depths[1], 1, 0), rtol=1e-4, atol=1e-5)


def test_contraction_and_nearest_neighbour_match_brute_force(run):
  rep = {d['name']: d for d in run['report']['depth']}
  x, y = run['eval']
  z = direct_z(run, x)
  intra, inter = [], []
  for i in range(len(z)):
    d = np.sqrt(((z[i + 1:] - z[i]) ** 2).sum(axis=1))
    same = y[i + 1:] == y[i]
    intra.extend(d[same])
    inter.extend(d[~same])
  np.testing.assert_allclose(rep['stage1']['intra_distance'], np.mean(intra), rtol=1e-4)
  np.testing.assert_allclose(rep['stage1']['inter_distance'], np.mean(inter), rtol=1e-4)
  np.testing.assert_allclose(rep['stage1']['contraction'], np.mean(intra) / np.mean(inter),
                             rtol=1e-4)
  xt, yt = run['train']
  zt = direct_z(run, xt)
  d2 = ((z[:, None, :] - zt[None, :, :]) ** 2).sum(-1)
  nn_acc = np.mean(yt[d2.argmin(axis=1)] == y)
  assert abs(rep['stage1']['nn1_accuracy'] - nn_acc) <= 2 / len(y)    # ties may break apart
  # Contraction ignores the scale of a layer. z is float32: scaled in float64, 3 z is exact,
  # so only contraction's own float64 rounding remains (3 z in float32 rounds each value).
  z64 = z.astype(np.float64)
  np.testing.assert_allclose(probes.contraction(3.0 * z64, y)['ratio'],
                             probes.contraction(z64, y)['ratio'], rtol=1e-9)


def test_probes_by_depth_and_head_accuracy(run):
  report = run['report']
  x, y = run['eval']
  logits, _ = run['net'].forward(run['variables'], x)
  np.testing.assert_allclose(report['head_accuracy'], np.mean(np.argmax(logits, -1) == y),
                             atol=1.5 / len(y))
  rows = report['depth']
  assert [r['name'] for r in rows] == ['input', 'stage0.block1', 'stage0', 'stage1.block1',
                                       'stage1']
  for r in rows:
    assert 0.5 < r['linear_accuracy'] <= 1 and 0.5 < r['nn1_accuracy'] <= 1
    assert 0 < r['contraction'] < 1
  # The linear probe on z is about as good as the trained head (or better: it has more to read).
  assert rows[-1]['linear_accuracy'] >= report['head_accuracy'] - 0.05


def test_linear_probe_on_separable_data():
  rng = np.random.default_rng(0)
  centres = 5 * rng.standard_normal((3, 20))
  y = np.repeat(np.arange(3), 40)
  x = centres[y] + rng.standard_normal((120, 20))
  r = probes.linear_probe(x[::2], y[::2], x[1::2], y[1::2])
  assert r['accuracy'] == 1.0 and r['converged']
  assert probes.nearest_neighbour(x[::2], y[::2], x[1::2], y[1::2]) == 1.0


def test_pca_full_rank_equals_raw_probe(run):
  curve = run['report']['pca']
  final = run['report']['depth'][-1]
  assert curve['depth'] == 'stage1'
  assert curve['dims'][-1] == curve['rank'] <= final['dim']
  assert abs(curve['full_accuracy'] - final['linear_accuracy']) <= 0.01
  d = curve['d_at_fraction']
  acc = dict(zip(curve['dims'], curve['accuracy']))
  assert acc[d] >= curve['fraction'] * curve['full_accuracy']
  if d - 1 in acc:
    assert acc[d - 1] < curve['fraction'] * curve['full_accuracy']
  assert np.all(np.diff(curve['explained_variance']) >= -1e-12)
  np.testing.assert_allclose(curve['explained_variance'][-1], 1.0, atol=1e-9)


def test_pca_components_are_the_principal_axes():
  rng = np.random.default_rng(1)
  for n, dim in ((50, 8), (6, 10)):        # both Gram-matrix branches
    x = rng.standard_normal((n, dim)) * np.linspace(3, 0.5, dim)
    mean, comps, var = pca.components(x)
    assert len(var) == min(n - 1, dim)
    np.testing.assert_allclose(comps @ comps.T, np.eye(len(var)), atol=1e-9)
    np.testing.assert_allclose(var, np.var((x - mean) @ comps.T, axis=0, ddof=1), rtol=1e-8)
    np.testing.assert_allclose(var, np.linalg.svd(x - mean, compute_uv=False)[:len(var)] ** 2
                               / (n - 1), rtol=1e-8)
  y = np.arange(60) % 3
  x = rng.standard_normal((60, 5))
  x[:, 0] += 4 * y
  curve = pca.pca_curve(x[:40], y[:40], x[40:], y[40:])
  raw = probes.linear_probe(x[:40], y[:40], x[40:], y[40:])['accuracy']
  assert abs(curve['full_accuracy'] - raw) <= 1 / 20


def test_interpolation_paths(run):
  net, variables = run['net'], run['variables']
  x, y = run['eval']
  pairs = interpolation.pick_pairs(y[:10], 2)
  assert all(y[i] != y[j] for i, j in pairs) and len(pairs) == 2
  a, b = x[[i for i, _ in pairs]], x[[j for _, j in pairs]]
  pixels, images, predicted = interpolation.interpolate(net, variables, a, b, 5)
  assert pixels.shape == images.shape == (2, 5, 8, 8, 1) and predicted.shape == (2, 5)
  np.testing.assert_allclose(pixels[:, 2], (a + b) / 2, atol=1e-6)
  np.testing.assert_allclose(images[:, 0], a, atol=1e-5)
  np.testing.assert_allclose(images[:, -1], b, atol=1e-5)
  # The middle image is the one whose representation is the midpoint of z_a and z_b.
  mid = direct_z(run, images[:, 2])
  np.testing.assert_allclose(mid, (direct_z(run, a) + direct_z(run, b)) / 2, atol=1e-4)
  report = run['report']['interpolation']
  assert report['steps'] == OPTIONS['num_steps'] and len(report['pairs']) == 2
  assert report['endpoint_max_abs_error'] < 1e-5


def test_pngs_and_report(run):
  out = run['out']
  expected = {
      'reconstruction.png': plots.grid_size_px(3, OPTIONS['num_images']),
      'interpolation.png': plots.grid_size_px(2 * OPTIONS['num_pairs'], OPTIONS['num_steps']),
      'depth.png': plots.LINE_PLOT_PX,
      'pca.png': plots.LINE_PLOT_PX,
      'metamers.png': plots.grid_size_px(3, pipeline.Options().num_metamers),
  }
  for name, size in expected.items():
    image = plots.plt.imread(os.path.join(out, name))
    assert image.shape[:2] == size, name
    assert image.std() > 0.01, name                   # not blank
  with open(os.path.join(out, 'report.md')) as f:
    text = f.read()
  for name in expected:
    assert f']({name})' in text
  report = run['report']
  assert report['run']['step'] == TRAIN_STEPS and report['run']['invertible'] is True
  assert report['data'] == {'train_examples': run['source'].num_train_examples,
                            'eval_examples': run['source'].num_eval_examples}
  assert 'eval [' in run['log'] and '100%' in run['log']      # the progress bar
  metamers = report['metamers']['summary']                     # section 5
  assert metamers['pairs'] == pipeline.Options().num_metamers
  assert metamers['max_logits_rel_error'] < 1e-3 and 'Metamers: ' in run['log']


class _MLPBaseline:
  """A stand-in for a non-invertible baseline: forward returns (logits, features)."""
  invertible = False
  input_shape = (8, 8, 1)

  def __init__(self):
    import flax.linen as nn

    class MLP(nn.Module):
      @nn.compact
      def __call__(self, x):
        h = nn.relu(nn.Dense(16)(x.reshape(len(x), -1)))
        return nn.Dense(10)(h), h

    self.module = MLP()

  def init(self, rng, x):
    return {'params': self.module.init(rng, x)['params'], 'batch_stats': {}}

  def forward(self, variables, x):
    return self.module.apply({'params': variables['params']}, x)

  def invert(self, variables, z):
    raise NotImplementedError


def test_baseline_runs_without_reconstruction(tmp_path):
  net = _MLPBaseline()
  variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  rng = np.random.default_rng(0)
  y = np.arange(96) % 4
  x = (rng.random((96, 8, 8, 1)) + y[:, None, None, None]).astype(np.float32)
  batches = lambda lo, hi: iter([{'image': x[i:i + 16], 'label': y[i:i + 16]}
                                 for i in range(lo, hi, 16)])
  with pytest.raises(ValueError, match='not invertible'):
    features.make_batch_fn(net, features.depths_for(net), with_inverse=True)
  report = pipeline.analyze(net, variables, batches(0, 64), batches(64, 96), str(tmp_path),
                            pipeline.Options(max_contraction_examples=32))
  assert 'skipped' in report['reconstruction'] and 'skipped' in report['interpolation']
  assert [d['name'] for d in report['depth']] == ['input', 'features']
  assert report['depth'][0]['linear_accuracy'] == 1.0
  assert sorted(os.listdir(tmp_path)) == ['depth.png', 'pca.png', 'report.json', 'report.md']


def test_options_are_validated():
  with pytest.raises(ValueError, match='num_steps'):
    pipeline.Options(num_steps=1).validate()
  with pytest.raises(ValueError, match='every_k'):
    features.irevnet_depths(irevnet_jax.build(tiny_model()).arch, every_k=-1)
  model = presets.digits()
  model.dtype, model.precision = 'bfloat16', 'default'
  model = pipeline.analysis_model_config(model)
  assert (model.dtype, model.precision) == ('float32', 'highest')


def _tile_centre(png, row, col):
  """The RGB(A) value at the centre of the image tile (row, col) of an `image_grid` PNG."""
  y = (plots.TITLE_IN + (row + 1) * plots.TILE_IN - 0.475 * plots.TILE_IN) * plots.DPI
  x = (plots.LABEL_IN + col * plots.TILE_IN + 0.475 * plots.TILE_IN) * plots.DPI
  return plots.plt.imread(png)[int(y), int(x), :3]


def test_images_are_shown_as_the_pixels_they_came_from(tmp_path):
  """ImageNet mean/std normalised inputs are plotted in their own colours, clipped to [0, 1];
  the reconstruction's error row stays computed on the model's input."""
  mean = tuple(255 * m for m in (0.485, 0.456, 0.406))
  std = tuple(255 * s for s in (0.229, 0.224, 0.225))
  colours = np.array([[200, 100, 50], [10, 250, 128]], np.float64)     # uint8 pixels
  x = (np.broadcast_to(colours[:, None, None], (2, 8, 8, 3)) - mean) / std
  x_hat = x.copy()
  x_hat[1] += 10.0          # a reconstruction far outside the pixel range: clipped to white
  space = plots.PixelSpace(mean, std)
  np.testing.assert_allclose(space(x[:, 0, 0]), colours / 255, atol=1e-12)
  png = str(tmp_path / 'reconstruction.png')
  plots.reconstruction_grid(x, x_hat, png, 0.0, pixel_space=space)
  for col, colour in enumerate(colours):
    np.testing.assert_allclose(_tile_centre(png, 0, col), colour / 255, atol=1 / 255)
  np.testing.assert_allclose(_tile_centre(png, 1, 0), colours[0] / 255, atol=1 / 255)
  np.testing.assert_allclose(_tile_centre(png, 1, 1), [1.0, 1.0, 1.0], atol=1 / 255)
  np.testing.assert_allclose(_tile_centre(png, 2, 0), [0.0, 0.0, 0.0], atol=1 / 255)  # no error
  np.testing.assert_allclose(_tile_centre(png, 2, 1), [1.0, 1.0, 1.0], atol=1 / 255)
  paths = np.stack([x, x_hat], axis=1)[None, 0]       # one pair, 2 steps: (1, 2, 8, 8, 3)
  png = str(tmp_path / 'interpolation.png')
  plots.interpolation_grid(paths, paths, png, pixel_space=space)
  np.testing.assert_allclose(_tile_centre(png, 0, 0), colours[0] / 255, atol=1 / 255)
  np.testing.assert_allclose(_tile_centre(png, 1, 1), colours[0] / 255, atol=1 / 255)
  digits = input_pipeline.digits_source()    # pixels 0..16 are shown as 0..1
  assert plots.PixelSpace(digits.pixel_mean, digits.pixel_std, digits.pixel_max)(
      np.ones((1, 1, 1))).item() == 1.0
