"""Tests for the paper's baselines (irevnet_jax.baselines): ResNet-50 v1.5 and RevNet-56/104.

Variables come from `jax.eval_shape` filled with NumPy random numbers: compiling
JAX's random initialisers costs more than everything else here on a CPU.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import irevnet_jax
from irevnet_jax import baselines
from irevnet_jax.model import reversible
from irevnet_jax.baselines import revnet
from experiments.configs import resnet50 as resnet50_config
from experiments.configs import revnet56 as revnet56_config
from experiments.configs import revnet104 as revnet104_config


def tiny(kind, **overrides):
  """A small baseline on 8x8 images: 'small' stem, a stride-1 and a stride-2 stage."""
  c = baselines.resnet50() if kind == 'resnet' else baselines.revnet56()
  c.input_shape = (8, 8, 1)
  c.stem = 'small'
  c.stem_width = 8
  c.units = (1, 3) if kind == 'revnet' else (1, 2)
  c.strides = (1, 2)
  c.widths = (4, 8)
  c.num_classes = 10
  c.backprop = 'autodiff'
  c.update(overrides)
  return c


def numpy_init(net, x, seed=0):
  """Variables from shapes only: He-normal kernels, random BN parameters and statistics."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)

  def fill(path, leaf):
    name = str(path[-1])
    shape, dtype = leaf.shape, leaf.dtype
    if 'kernel' in name:
      fan_in = np.prod(shape[-4:-1]) if len(shape) >= 4 else shape[-2]
      value = rng.normal(size=shape) * np.sqrt(2.0 / fan_in)
    elif 'scale' in name:
      value = rng.uniform(0.5, 1.5, shape)
    elif 'var' in name:
      value = rng.uniform(0.5, 2.0, shape)
    else:  # bias, mean
      value = 0.1 * rng.normal(size=shape)
    return jnp.asarray(value, dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def rel_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def digits_batch(n):
  from sklearn.datasets import load_digits
  data = load_digits()
  x = (data.images[:n, :, :, None] / 16.0).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(data.target[:n])


# --- Parameter counts and configs ----------------------------------------------------------


@pytest.mark.parametrize('config_module, count', [
    (resnet50_config, 25_557_032),   # torchvision's resnet50: 25,557,032
    (revnet56_config, 27_553_128),   # "about 27.6M" (the RevNet authors)
    (revnet104_config, 45_428_072),  # "about 45.4M"
])
def test_parameter_counts_of_the_experiment_configs(config_module, count):
  net = irevnet_jax.build(config_module.get_config().model)  # the core dispatches on arch
  assert isinstance(net, irevnet_jax.Net)   # one Net class for every model
  assert not net.invertible
  assert irevnet_jax.count_params(net) == count   # jax.eval_shape: nothing allocated
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
  logits, features = jax.eval_shape(net.forward, variables, x)
  assert logits.shape == (2, 1000)
  assert features.shape == (2, *net.z_shape)
  assert net.z_shape == ((7, 7, 2048) if net.arch.kind == 'resnet' else (7, 7, 3328))


def test_backprop_modes_share_one_parameter_tree():
  x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
  for kind, modes in (('resnet', ('autodiff', 'remat')),
                      ('revnet', ('autodiff', 'remat', 'reversible'))):
    trees = [jax.eval_shape(irevnet_jax.build(tiny(kind, backprop=m)).init,
                            jax.random.PRNGKey(0), x) for m in modes]
    for tree in trees[1:]:
      assert jax.tree_util.tree_structure(tree) == jax.tree_util.tree_structure(trees[0])
      assert jax.tree_util.tree_map(lambda a: a.shape, tree) == jax.tree_util.tree_map(
          lambda a: a.shape, trees[0])


# --- Clear errors ----------------------------------------------------------------------------


def test_invert_raises_and_configs_are_validated():
  net = irevnet_jax.build(tiny('revnet'))
  with pytest.raises(NotImplementedError, match="arch='irevnet'"):
    net.invert({}, jnp.zeros((1, *net.z_shape)))
  bad = revnet56_config.get_config().model
  bad.input_shape = (8, 8, 1)   # the digits override without a small stem
  with pytest.raises(ValueError, match="stem='small'"):
    irevnet_jax.build(bad)
  with pytest.raises(ValueError, match="use arch='revnet'"):
    irevnet_jax.build(tiny('resnet', backprop='reversible'))
  typo = tiny('resnet')
  typo.unknown_field = 1
  with pytest.raises(ValueError, match='unknown_field'):
    irevnet_jax.build(typo)
  with pytest.raises(ValueError, match='model.arch'):
    irevnet_jax.build(tiny('resnet', arch='vgg'))
  with pytest.raises(ValueError, match='model.units'):
    irevnet_jax.build(tiny('resnet', units=(2,)))
  with pytest.raises(ValueError, match=r'x must have shape \(N, 8, 8, 1\)'):
    jax.eval_shape(net.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))


# --- RevNet: exact inversion inside a stage, reversible gradients -------------------------------


@pytest.mark.parametrize('train', [False, True])
def test_revnet_units_invert_exactly_inside_a_stage(x64, train):
  net = irevnet_jax.build(tiny('revnet', dtype='float64'))
  variables = numpy_init(net, jnp.zeros((1, 8, 8, 1), jnp.float64))
  stage = 1   # stride-2 stage: an entry unit, then 2 invertible units
  stacked = [{'params': variables['params'][f'stage{stage}'][f'rest_{k}'],
              'batch_stats': variables['batch_stats'][f'stage{stage}'][f'rest_{k}']} for k in 'fg']
  half = 2 * net.arch.widths[stage]
  specs, module = revnet.rest_couplings(net.arch, stage, (4, 4))
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  rng = np.random.default_rng(1)
  pair = tuple(jnp.asarray(rng.normal(size=(4, 4, 4, half))) for _ in range(2))

  @jax.jit
  def round_trip(pair):
    out, _ = reversible.run_steps('autodiff', specs, module, stacked, pair, keys, train)
    return out, reversible.invert_steps(specs, module, stacked, out, keys, train)

  out, back = round_trip(pair)
  assert rel_error(out[0], pair[0]) > 0.1  # the units do change the pair
  for a, b in zip(back, pair):
    assert rel_error(a, b) < 1e-13


@pytest.mark.parametrize('block_scan', ['auto', 'rolled'], ids=['cpu_default_unrolled', 'rolled_as_on_gpu'])
def test_revnet_reversible_and_remat_gradients_equal_autodiff(block_scan, x64):
  x, y = digits_batch(8)
  x = x.astype(jnp.float64)
  results = {}
  for mode in ('autodiff', 'remat', 'reversible'):
    # one stride-2 stage: an entry unit (rematerialised in 'reversible'), then 2 invertible units
    net = irevnet_jax.build(tiny('revnet', dtype='float64', backprop=mode, units=(3,),
                                 strides=(2,), widths=(4,), block_scan=block_scan))
    if mode == 'autodiff':
      variables = numpy_init(net, x)

    def loss_fn(params, net=net):
      (logits, features), state = net.forward(
          {'params': params, 'batch_stats': variables['batch_stats']}, x, train=True)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss + 1e-2 * jnp.mean(features ** 2), state

    results[mode] = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables['params'])

  (loss0, state0), grads0 = results['autodiff']
  for mode in ('remat', 'reversible'):
    (loss, state), grads = results[mode]
    assert abs(float(loss) - float(loss0)) <= 1e-12 * abs(float(loss0))
    errors = jax.tree_util.tree_map(rel_error, grads, grads0)
    worst = max(jax.tree_util.tree_leaves(errors))
    assert worst <= 1e-10, (mode, errors)
    # running statistics are updated once, by the forward pass
    stat_errors = jax.tree_util.tree_map(rel_error, state, state0)
    assert max(jax.tree_util.tree_leaves(stat_errors)) <= 1e-12
  assert all(float(jnp.linalg.norm(g)) > 0 for g in jax.tree_util.tree_leaves(grads0))


# --- Training through the runner ------------------------------------------------------------


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('config_name', ['resnet50', 'revnet56'])
def test_experiment_config_trains_through_the_runner(config_name, tmp_path):
  """The ImageNet config with the documented small-image overrides, on digits, 4 CPU devices
  (synchronised BN over the pmap axis), through `python -m experiments.main` (run in this
  process): the logged training loss falls."""
  overrides = {
      'dataset.name': 'digits', 'model.input_shape': '(8,8,1)', 'model.stem': 'small',
      'model.num_classes': 10, 'model.stem_width': 8, 'model.units': '(1,2)',
      'model.strides': '(1,2)', 'model.widths': '(4,8)', 'batch_size': 64,
      'eval_batch_size': 128, 'num_train_steps': 40, 'log_every_steps': 10,
      'eval_every_steps': 0, 'checkpoint_every_steps': 0, 'lr_boundaries': '()',
      'num_devices': 0,
  }
  import in_process  # pylint: disable=g-import-not-at-top
  code, output = in_process.command(
      'experiments.main', f'--config={REPO}/experiments/configs/{config_name}.py',
      f'--workdir={tmp_path}', *[f'--config.{k}={v}' for k, v in overrides.items()])
  assert code == 0, output[-3000:]
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  losses = [r['train/loss'] for r in records if 'train/loss' in r]
  assert len(losses) == 4 and np.all(np.isfinite(losses)), records
  assert losses[-1] < 0.9 * losses[0], losses
  assert any('eval/accuracy' in r for r in records), records
