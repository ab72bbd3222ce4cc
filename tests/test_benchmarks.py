"""The benchmarks' logic (what benchmarks/gpu.sh and the RESULTS.md commands run) on tiny
models; no timing is asserted."""
import argparse
import math
import os

import jax
import jax.numpy as jnp
import pytest

from benchmarks import bn_relu, common, gpu_options, gpu_suite, pallas_conv, speed

FAST = {'xla_backend_optimization_level': 0}   # compiles several times faster on CPU


def test_train_row_times_the_runner_step_and_steps_down_to_a_batch_that_fits():
  kwargs = dict(train_dtype='float32', smoke=True, blocks=(1, 1, 1), min_seconds=0.0,
                compiler_options=FAST)
  row = speed.train_row('cifar10', 'reversible', 16, limit_bytes=2**30, **kwargs)
  assert row['batch'] == 16 and row['max_batch'] > 16 and row['img_s'] > 0, row
  assert row['setting'] == 'float32/default' and row['config_blocks'] == 54, row
  assert row['note'] == '', row

  # Batch 16 does not fit this limit: the row runs the largest batch that XLA plans to fit.
  limit = int(0.85 * row['peak_gib'] * common.GIB)   # batch 1 needs ~0.72x of batch 16 here
  row = speed.train_row('cifar10', 'reversible', 16, limit_bytes=limit, feed=True, **kwargs)
  assert 1 <= row['batch'] < 16 and row['peak_gib'] * common.GIB <= limit, row
  assert 'plans' in row['note'] and row['img_s'] > 0, row

  assert speed.train_row('resnet50', 'reversible', 8, smoke=True) is None   # no such mode
  lines = gpu_suite.summary_lines([row], smoke=True)
  assert 'cifar10' in lines[0] and 'PyTorch' in lines[0], lines
  assert '100-block models: no train row' in lines[-1], lines


def test_the_authors_rows_of_the_same_run_replace_the_anchors_in_the_ratios():
  ours = lambda model, mode, batch, img_s: {'what': 'train', 'model': model, 'mode': mode,
                                            'setting': 'bfloat16/default', 'batch': batch,
                                            'img_s': img_s}
  theirs = lambda model, mode, batch, img_s: dict(ours(model, mode, batch, img_s), what='authors')
  rows = [ours('bijective_released', 'autodiff', 256, 3000.0),
          ours('bijective_released', 'autodiff', 1024, 3500.0),
          theirs('bijective_released', 'eager', 512, 1600.0),
          theirs('bijective_released', 'eager', 768, 1750.0),
          ours('cifar10', 'autodiff', 1024, 30000.0),
          theirs('cifar10', 'eager', 1024, 10000.0), theirs('cifar10', 'compile', 1024, 12000.0),
          ours('resnet50', 'autodiff', 256, 6000.0)]
  lines = gpu_suite.summary_lines(rows, smoke=False, card='H200')
  text = '\n'.join(lines)
  assert ('3,500 images/s (autodiff, batch 1024) = 2.00x the authors\' 1,750 images/s (eager, '
          'batch 768)') in text, text
  assert 'best of ours / best of theirs = 2.00x; target 2.0x: met' in text, text
  assert '= 3.00x the authors\' 10,000' in text and '= 2.50x the authors\' 12,000' in text, text
  anchored = [l for l in lines if 'PyTorch\'s' in l]   # anchors only for resnet50 here
  assert len(anchored) == 1 and anchored[0].startswith('resnet50'), lines
  rows[1]['img_s'] = 3400.0
  assert 'target 2.0x: NOT met' in '\n'.join(gpu_suite.summary_lines(rows, smoke=False))


def test_compile_only_rows_give_memory_against_depth():
  rows = speed.add_depth_ratios([speed.train_row(
      'cifar10', 'autodiff', 4, train_dtype='float32', smoke=True, blocks=(depth,) * 3,
      compile_only=True, compiler_options=FAST) for depth in (1, 2)])
  assert [r['blocks'] for r in rows] == [3, 6] and rows[0]['step_ms'] is None, rows
  # Autodiff stores every block's activations: twice the blocks, more temporaries.
  assert rows[0]['temp_x'] == rows[0]['act_x'] == 1.0 and rows[1]['temp_x'] > 1.0, rows


@pytest.mark.processes   # a fresh process: a step of .ci/run of its own
def test_a_side_of_trees_is_that_checkouts_speed_py_in_a_fresh_process(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=0')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  args = argparse.Namespace(batch='4', blocks='1,1,1', min_seconds=0.0, input=0, block_scan='',
                            cache_dir='', smoke=True)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  [row] = speed.tree_rows(repo, 'cifar10', 'float32', 'reversible', args)
  assert row['note'] == '' and row['batch'] == 4 and row['setting'] == 'float32/default', row
  assert row['temp_gib'] > 0 and row['rss_gib'] > 0 and row['loss'] > 0, row


def test_recipe_differences_count_epochs_as_the_runner_and_the_authors_do():
  from benchmarks import recipe_differences
  cifar = {row['config']: row for row in recipe_differences.schedule_table()}['cifar10']
  first_here, first_theirs = round(60 * 50_000 / 128), 60 * math.ceil(50_000 / 128)
  assert cifar['phase starts here / theirs (offset)'].startswith(
      f'{first_here} / {first_theirs} ({first_here - first_theirs:+d})'), cifar
  # one (H, W) per BatchNorm layer of the model: as many as its variables hold
  import irevnet_jax
  from irevnet_jax.model import presets
  model = presets.cifar10()
  shapes = jax.eval_shape(irevnet_jax.build(model).init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  layers = sum(v.shape[0] if v.ndim == 2 else 1
               for path, v in jax.tree_util.tree_flatten_with_path(shapes['batch_stats'])[0]
               if path[-1].key == 'var')
  assert len(recipe_differences._bn_inputs(presets.layout(model))) == layers == 162


def test_plain_bn_relu_rows_are_compared_with_their_fused_rows():
  row = lambda img_s, note='': {'what': 'train', 'model': 'bijective_released',
                                'mode': 'autodiff', 'setting': 'bfloat16/default',
                                'batch': 256, 'img_s': img_s, 'peak_gib': 30.0, 'note': note}
  rows = [row(2000.0), row(1600.0, 'plain BN-ReLU')]
  lines = gpu_suite.summary_lines(rows, smoke=False)
  assert any('fused BN-ReLU 2,000 images/s against plain 1,600 = 1.25x' in line
             for line in lines), lines
  assert not any('1,600' in line and 'PyTorch' in line for line in lines), lines
  assert [item for item in gpu_suite.gpu_plan(smoke=True)
          if gpu_suite.PLAIN_BN_RELU in item], 'the GPU table times the plain BN-ReLU too'


def test_bn_relu_benchmark_shows_fewer_saved_bytes_fused():
  model = common.experiment_config('cifar10', batch_size=4, smoke=True).model
  before, after = (bn_relu.f_row(model, 1, 4, fused) for fused in (False, True))
  assert after['saved_mb_img'] < 0.6 * before['saved_mb_img'], (before, after)


def test_pallas_kernel_keeps_fewer_activations_and_has_a_gpu_row():
  none, pallas = pallas_conv.rows_of('cifar10', [1], 4)
  assert (none['kernel'], pallas['kernel']) == ('none', 'pallas')
  assert pallas['saved_mb_img'] < 0.7 * none['saved_mb_img'], (none, pallas)
  assert '--model_field=fused_kernel=pallas' in gpu_options.VARIANTS['pallas kernel'][1]
