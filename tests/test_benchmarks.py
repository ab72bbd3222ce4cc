"""The speed benchmark's logic (what benchmarks/gpu.sh runs) on a tiny model; no timing
is asserted."""
from benchmarks import common, speed

FAST = {'xla_backend_optimization_level': 0}   # compiles several times faster on CPU


def test_train_row_times_the_runner_step_and_steps_down_to_a_batch_that_fits():
  kwargs = dict(train_dtype='float32', smoke=True, blocks=(1, 1, 1), min_seconds=0.0,
                compiler_options=FAST)
  row = speed.train_row('cifar10', 'reversible', 16, limit_bytes=2**30, **kwargs)
  assert row['batch'] == 16 and row['max_batch'] > 16 and row['img_s'] > 0, row
  assert row['setting'] == 'float32/default' and row['config_blocks'] == 54, row
  assert row['note'] == '', row

  # Batch 16 does not fit this limit: the row runs the largest batch that XLA plans to fit.
  limit = int(0.7 * row['peak_gib'] * common.GIB)
  row = speed.train_row('cifar10', 'reversible', 16, limit_bytes=limit, **kwargs)
  assert 1 <= row['batch'] < 16 and row['peak_gib'] * common.GIB <= limit, row
  assert 'plans' in row['note'] and row['img_s'] > 0, row

  assert speed.train_row('resnet50', 'reversible', 8, smoke=True) is None   # no such mode
  lines = speed.summary_lines([row], smoke=True)
  assert 'cifar10' in lines[0] and 'PyTorch' in lines[0], lines
  assert '100-block models: no train row' in lines[-1], lines
