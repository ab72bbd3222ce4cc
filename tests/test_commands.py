"""The commands as users meet them (issue 18): evaluate and analyze on an imported run with
--dataset.name=synthetic, records written once, resumed runs whose metrics.jsonl equals an
uninterrupted run's, the authors' CIFAR checkpoint, suggestions and console lines.

Library calls and commands that succeed run in-process (tests/in_process.py); one-line errors
and signals run the commands as subprocesses.
"""
import logging
import os
import pickle
import re
import subprocess
import sys

import pytest

from irevnet_jax.run import checkpoints, metrics

from irevnet_jax import train
from irevnet_jax.interop import authors, pickled_classes, runs
from irevnet_jax.train import evaluate_run, parallel
from authors_fixture import NPZ
import in_process
import train_testlib as lib

ABSL_PREFIX = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d', re.M)
ESCAPE = '\x1b'


def start(module, *args, num_devices=4):
  return subprocess.Popen([sys.executable, '-m', module, *args], cwd=lib.REPO,
                          env=lib.env_with_devices(num_devices),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def one_error_line(output):
  lines = [l for l in output.splitlines() if l.startswith(('Error:', 'FATAL'))]
  assert len(lines) == 1 and 'Traceback' not in output and ESCAPE not in output, output[-3000:]
  return lines[0]


class DataParallel:      # stand-ins, pickled under the names of torch's and the authors' classes
  pass


class iRevNet:           # pylint: disable=invalid-name
  pass


def write_authors_cifar_checkpoint(path):
  """What the authors' CIFAR_main.py saves, {'model': the whole DataParallel iRevNet, 'acc',
  'epoch'}, as a legacy torch.save file whose object pickle names their classes."""
  model = DataParallel()
  model.__dict__['_modules'] = {'module': iRevNet()}
  body = pickle.dumps({'model': model, 'acc': 94.8, 'epoch': 200}, protocol=2)
  for name, module in (('DataParallel', 'torch.nn.parallel.data_parallel'),
                       ('iRevNet', 'models.iRevNet')):
    body = body.replace(f'{__name__}\n{name}\n'.encode(), f'{module}\n{name}\n'.encode())
  sys_info = {'protocol_version': 1001, 'little_endian': True,
              'type_sizes': {'short': 2, 'int': 4, 'long': 4}}
  with open(path, 'wb') as f:
    for header in (0x1950a86a20f9469cfc6c, 1001, sys_info):
      f.write(pickle.dumps(header, protocol=2))
    f.write(body + pickle.dumps([], protocol=2))


def tiny_imagenet_config():
  """The fixture model's config (tests/authors_tiny_config.py) as it would be for ImageNet:
  evaluate and analyze need --dataset.name=synthetic on a machine without it."""
  import authors_tiny_config  # pylint: disable=g-import-not-at-top
  config = authors_tiny_config.get_config()
  config.dataset.name = 'imagenet2012'
  config.dataset.num_classes = None
  config.num_devices = 1
  return config


@pytest.fixture(scope='module')
def imported_imagenet_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('imported') / 'run')
  runs.import_weights(NPZ, tiny_imagenet_config(), workdir)
  return workdir


def _records(workdir):
  """metrics.jsonl without timings."""
  return [{k: v for k, v in r.items() if k != 'steps_per_second'}
          for r in metrics.read_jsonl(str(workdir))]


@pytest.mark.processes   # signals a running process: a step of .ci/run of its own
def test_a_resumed_run_records_what_an_uninterrupted_run_records(tmp_path, tiny_run):
  """Item 5: SIGTERM between two train/* records, then SIGTERM during the final evaluation:
  the resumed run redoes that evaluation, and its first train/* record averages every step
  since the last one. Its metrics.jsonl equals the uninterrupted tiny run's, timings aside."""
  workdir = str(tmp_path)
  args = lib.flag_args() + [f'--workdir={workdir}', '--kill_signal=TERM']
  code, output = lib.finish(lib.start(args + ['--kill_at_step=5'], script=lib.HELPER))
  assert code == 143 and 'rerun the same command to resume' in output, output[-3000:]
  assert 0 < max(checkpoints.Checkpointer(workdir, keep=3).all_steps()) < 8
  assert not metrics.read_jsonl(workdir)      # the steps before the first record: kept aside
  code, output = lib.finish(lib.start(args + ['--kill_at_eval_batch=1'], script=lib.HELPER))
  assert code == 143, output[-3000:]
  assert checkpoints.Checkpointer(workdir, keep=3).all_steps()[-1] == 24
  assert not [r for r in metrics.read_jsonl(workdir) if 'eval/loss' in r]
  train.train_and_evaluate(lib.make_config(), workdir)

  expected = _records(tiny_run[0])
  assert [r['step'] for r in expected] == [8, 16, 24, 24]    # train/* at 8, 16, 24; eval/* at 24
  assert _records(workdir) == expected


def test_a_second_evaluate_compiles_nothing_that_the_cache_holds(tmp_path, tiny_run):
  """The persistent compilation cache is on by default and takes every program (the CLI
  lowers JAX's 1 s threshold): the first `evaluate` writes its programs, a second one of
  the same run finds all of them (writes no new entry), --nocompilation_cache writes none."""
  workdir = lib.copy_of_run(tiny_run, tmp_path)
  env = lib.env_with_devices(4)
  env.pop('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', None)

  def evaluate(cache, *flags):
    out = subprocess.run([sys.executable, '-m', 'experiments.evaluate', f'--workdir={workdir}',
                          f'--compilation_cache_dir={cache}', *flags], cwd=lib.REPO, env=env,
                         capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r'Compiling took [\d.]+ s for \d+ programs', out.stderr), out.stderr[-2000:]
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []

  cache = str(tmp_path / 'cache')
  first = evaluate(cache)
  assert len(first) >= 2, first
  assert evaluate(cache) == first
  assert evaluate(str(tmp_path / 'off'), '--nocompilation_cache') == []


def test_batch_size_suggestions_keep_eight_examples_per_device():
  assert parallel.suggested_batch_size(7, 4, parallel.MIN_BN_EXAMPLES) == 32
  assert parallel.suggested_batch_size(50, 4, parallel.MIN_BN_EXAMPLES) == 52
  assert parallel.suggested_batch_size(18, 4) == 20      # eval batches: the nearest multiple
  assert parallel.suggested_batch_size(3, 4) == 4
  with pytest.raises(ValueError, match=r'batch_size=18 is not divisible by the 4 devices \(x\); '
                     'use a multiple of 4, e.g. batch_size=20.'):
    parallel.check_batch_size('batch_size', 18, 4, 'devices (x)')
  with pytest.raises(ValueError, match='batch_size=0 is not positive; .* e.g. batch_size=4.'):
    parallel.check_batch_size('batch_size', 0, 4, 'devices')
  parallel.check_batch_size('batch_size', 32, 4, 'devices', parallel.MIN_BN_EXAMPLES)


def test_evaluate_caps_its_batches_shows_progress_and_records_once(imported_imagenet_run, caplog):
  """Item 1 and 11: 3 synthetic images are one batch of 3 (not 8), each pass says which batch
  it is at, and a second identical evaluation is not appended again."""
  assert evaluate_run.capped_batch(256, 32, 1) == 32
  assert evaluate_run.capped_batch(256, 3, 4) == 4 and evaluate_run.capped_batch(8, 30, 4) == 8
  workdir = imported_imagenet_run
  with caplog.at_level(logging.INFO):
    result = evaluate_run.evaluate_run(workdir, dataset={'name': 'synthetic',
                                                         'num_eval_examples': 3})
  assert 'loss and accuracy: batch 1 of 1' in caplog.text and 'inversion: batch 1 of 1' in caplog.text
  assert result.metrics['eval/num_examples'] == 3 and result.metrics['eval/inversion_examples'] == 3
  assert result.config.dataset.num_classes == 5           # the model's classes, not 10
  assert evaluate_run.record(result) and not evaluate_run.record(result)
  records = [r for r in metrics.read_jsonl(workdir) if 'evaluate/synthetic/loss' in r]
  assert len(records) == 1 and records[0]['step'] == 0


def test_the_commands_on_a_run_without_its_data_and_their_one_line_errors(
    imported_imagenet_run, tmp_path):
  """Item 2: analyze takes evaluate's --dataset.* flags; item 12: plain console lines;
  items 3, 9, 10: one line each, exit 1, nothing written."""
  workdir = imported_imagenet_run
  cifar = str(tmp_path / 'checkpoint_cifar.pth.tar')
  write_authors_cifar_checkpoint(cifar)
  refused = {
      'import': start('experiments.import_weights', f'--weights={cifar}',
                      f'--workdir={tmp_path / "cifar_run"}'),
      'batch': start('experiments.main', f'--config={lib.DIGITS_CONFIG}', '--config.batch_size=7',
                     f'--workdir={tmp_path / "batch_run"}'),
      'dataset': start('experiments.main', f'--config={lib.DIGITS_CONFIG}',
                       '--config.dataset.name=imagenet2012', f'--workdir={tmp_path / "in_run"}'),
  }
  # Meanwhile analyze, in this process.
  code, output = in_process.command(
      'experiments.analyze', f'--workdir={workdir}', '--dataset.name=synthetic',
      '--dataset.num_train_examples=16', '--dataset.num_eval_examples=8', '--batch_size=8',
      '--num_images=2', '--num_pairs=1', '--num_steps=2', '--max_contraction_examples=8')
  assert code == 0, output[-3000:]
  assert f'Loaded {workdir} at step 0.' in output.splitlines() and not ABSL_PREFIX.search(output)
  assert os.path.getsize(os.path.join(workdir, 'analysis', 'report.json')) > 0
  outputs = {}
  for name, process in refused.items():
    code, outputs[name] = lib.finish(process)
    assert code == 1, outputs[name][-3000:]
  line = one_error_line(outputs['import'])
  assert "CIFAR_main.py checkpoint ({'model', 'acc', 'epoch'})" in line
  assert 'models.iRevNet.iRevNet' in line and line.endswith('In this command: --noweights_only.')
  assert not os.path.exists(tmp_path / 'cifar_run')
  assert 'e.g. batch_size=32.' in one_error_line(outputs['batch'])
  assert 'Each device sees' not in outputs['batch']
  assert not os.path.exists(tmp_path / 'batch_run' / 'checkpoints')
  line = one_error_line(outputs['dataset'])
  assert ('model.input_shape=(8, 8, 1) (its RGB images are resized to (H, W, 3)) and '
          'model.num_classes=10 (it has 1000 classes)') in line, line
  assert not os.path.exists(tmp_path / 'in_run' / 'checkpoints')


def test_the_authors_cifar_layout_is_recognised_without_unpickling(tmp_path):
  path = str(tmp_path / 'checkpoint.t7')
  write_authors_cifar_checkpoint(path)
  assert {'torch.nn.parallel.data_parallel.DataParallel',
          'models.iRevNet.iRevNet'} <= pickled_classes.pickled_classes(path)
  with pytest.raises(authors.CheckpointFormatError, match="pickles a whole model"):
    authors.load_state_dict(path)
  assert pickled_classes.whole_model_message(NPZ) is None
