"""The authors' pretrained model through the commands, end to end, on the tiny fixture model.

tests/fixtures/authors_irevnet/ holds a tiny i-RevNet made with the authors' PyTorch code;
tests/authors_tiny_config.py is the released config shrunk to it (on synthetic images).
`python -m experiments.import_weights` turns the checkpoint into a run directory, which
`experiments.evaluate`, `experiments.analyze`, `experiments.export_weights` and
`experiments.main` (fine-tuning) read unchanged; the export gives the fixture's state dict
back exactly; bad inputs end in one line with nothing written. The commands run in this
process (tests/in_process.py, 4 CPU devices); the one-line errors of bad imports run as
subprocesses on one CPU device. The PyTorch checks skip without PyTorch.
"""
import importlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import irevnet_jax
from irevnet_jax.run import checkpoints, metrics, run_config, workdir_lock
from irevnet_jax.data import input_pipeline
from irevnet_jax.interop import authors, runs
from irevnet_jax.train import evaluate_run, parallel, program, state as state_lib
from authors_fixture import NPZ, PTH_TAR, needs_torch, torch
from model_utils import assert_same_state_dict
import in_process
import train_testlib as lib

TINY_CONFIG = os.path.join(lib.REPO, 'tests', 'authors_tiny_config.py')


def tiny_config():
  import authors_tiny_config  # pylint: disable=g-import-not-at-top
  return authors_tiny_config.get_config()


def start(module, *args, env=None):
  """Starts `python -m <module> args` on one CPU device; output is stdout + stderr."""
  return subprocess.Popen([sys.executable, '-m', module, *args], cwd=lib.REPO,
                          env={**lib.env_with_devices(1), **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def command(module, *args):
  """Runs `python -m <module> args` in this process; returns the output; fails the test on a
  non-zero exit."""
  code, output = in_process.command(module, *args)
  assert code == 0, output[-4000:]
  return output


def import_args(weights, workdir, *extra):
  return [f'--config={TINY_CONFIG}', f'--weights={weights}', f'--workdir={workdir}', *extra]


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  """The fixture's .npz imported by the command into a new run directory."""
  workdir = str(tmp_path_factory.mktemp('imported') / 'run')
  output = command('experiments.import_weights', *import_args(NPZ, workdir))
  return workdir, output


@pytest.fixture(scope='module')
def evaluated(imported):
  """`experiments.evaluate` on the imported run, on 10 synthetic images in batches of 4."""
  workdir, _ = imported
  output = command('experiments.evaluate', f'--workdir={workdir}',
                   '--dataset.num_eval_examples=10', '--batch_size=4', '--inversion_examples=6')
  return workdir, output


def test_import_writes_a_run_at_step_0_that_main_restores(imported):
  workdir, output = imported
  assert 'Imported' in output and '74 entries, 84,497 parameters' in output
  assert runs.checkpoint_steps(workdir) == [0]
  config = tiny_config()
  assert run_config.read_config(workdir).to_json(sort_keys=True) == config.to_json(sort_keys=True)
  record = runs.read_import_record(workdir)
  assert record['source'] == NPZ and record['step'] == 0 and len(record['sha256']) == 64
  assert len(record['num_batches_tracked']) == 12     # 2 + 3 * 3 block BNs and bn1
  assert set(record['num_batches_tracked'].values()) == {3}

  # Restored as experiments.main restores it: against the target of a fresh run.
  prog = program.build_program(config, parallel.make_backend('pmap', jax.local_devices()))
  # (compiles nothing)
  target = state_lib.host_zeros(prog.state_shapes)
  checkpointer = checkpoints.Checkpointer(workdir, keep=2, use_async=False, read_only=True)
  state, step = checkpointer.restore(target=target)
  checkpointer.close()
  assert step == 0 and int(state['step']) == 0
  assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(target)
  expected = authors.to_variables(authors.load_state_dict(NPZ), config.model)
  for name in ('params', 'batch_stats'):
    jax.tree_util.tree_map(np.testing.assert_array_equal, state[name], expected[name])
  assert all(not np.any(leaf) for leaf in jax.tree_util.tree_leaves(state['opt_state']))

  class KeyOnly:     # create_state's rng without initialising a model
    input_shape = (1, 1, 1)
    init = staticmethod(lambda key, x: {'params': {}, 'batch_stats': {}})
  fresh = state_lib.create_state(KeyOnly(), optax.identity(), config.seed)
  np.testing.assert_array_equal(state['rng'], fresh['rng'])


@needs_torch
def test_the_pth_tar_imports_the_same_run(imported, tmp_path):
  runs.import_weights(PTH_TAR, tiny_config(), str(tmp_path))
  _, from_npz, _ = checkpoints.load_run(imported[0])
  _, from_pth, _ = checkpoints.load_run(str(tmp_path))
  jax.tree_util.tree_map(np.testing.assert_array_equal, from_pth, from_npz)
  assert (runs.read_import_record(str(tmp_path))['num_batches_tracked'] ==
          runs.read_import_record(imported[0])['num_batches_tracked'])


def test_evaluate_prints_and_records_what_the_model_computes(evaluated):
  workdir, output = evaluated
  assert 'checkpoint step 0, synthetic eval split (10 examples)' in output
  assert 'top-1 accuracy' in output and 'inversion error (rel. L2)' in output
  assert f'Appended to {workdir}/metrics.jsonl at step 0 as evaluate/synthetic/*.' in output
  [line] = metrics.read_jsonl(workdir)
  assert line['step'] == 0
  assert sorted(line) == sorted(['step'] + [f'evaluate/synthetic/{k}' for k in (
      'loss', 'accuracy', 'accuracy_top5', 'num_examples', 'inversion_rel_error',
      'inversion_examples')])
  assert line['evaluate/synthetic/num_examples'] == 10
  assert line['evaluate/synthetic/inversion_examples'] == 6
  assert line['evaluate/synthetic/inversion_rel_error'] < 1e-6

  # The same numbers, computed here from the fixture's weights on the same batches.
  config = tiny_config()
  variables = authors.to_variables(authors.load_state_dict(NPZ), config.model)
  with config.dataset.unlocked():
    config.dataset.num_eval_examples = 10
  source = input_pipeline.get_source(config.dataset, config.model.input_shape)
  forward = jax.jit(irevnet_jax.build(config.model).forward)
  losses, correct = [], []
  for batch in input_pipeline.normalized(source.eval_batches(4, 0, 1), source):
    logits = np.asarray(forward(variables, batch['image'])[0])
    keep = batch['mask'] > 0
    losses.extend(optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['label'])[keep])
    correct.extend((logits.argmax(-1) == batch['label'])[keep])
  assert len(losses) == 10
  np.testing.assert_allclose(line['evaluate/synthetic/loss'], np.mean(losses), rtol=1e-5)
  assert line['evaluate/synthetic/accuracy'] == np.mean(correct)
  assert line['evaluate/synthetic/accuracy_top5'] == 1.0       # 5 classes


def test_evaluate_does_not_write_into_a_run_that_is_training(imported):
  workdir, _ = imported
  lock = workdir_lock.WorkdirLock(workdir)
  try:
    assert evaluate_run.lock_for_writing(workdir)[0] is None
  finally:
    lock.release()
  second, reason = evaluate_run.lock_for_writing(workdir)
  assert second is not None and reason is None
  second.release()


def test_records_of_evaluate_survive_a_resume(tmp_path):
  workdir = str(tmp_path)
  writer = metrics.MetricWriter(workdir)
  for step in (4, 8):
    writer.write(step, {'train/loss': 1.0})
  writer.close()
  evaluation = metrics.MetricWriter(workdir, append=True)
  evaluation.write(4, {'evaluate/synthetic/accuracy': 0.5})
  evaluation.close()
  assert [r['step'] for r in metrics.read_jsonl(workdir)] == [4, 8, 4]
  metrics.MetricWriter(workdir, resume_step=4).close()     # a run resumed at step 4
  assert metrics.read_jsonl(workdir) == [{'step': 4, 'train/loss': 1.0},
                                         {'step': 4, 'evaluate/synthetic/accuracy': 0.5}]


def test_analyze_reads_an_imported_run(imported):
  workdir, _ = imported
  command('experiments.analyze', f'--workdir={workdir}', '--batch_size=16',
          '--num_images=4', '--num_pairs=2', '--num_steps=3', '--max_contraction_examples=12')
  with open(os.path.join(workdir, 'analysis', 'report.json')) as f:
    report = json.load(f)
  assert report['run']['step'] == 0 and report['data'] == {'train_examples': 32,
                                                           'eval_examples': 12}
  assert report['reconstruction']['rel_l2_error'] < 1e-6
  assert report['interpolation']['endpoint_max_abs_error'] < 1e-5
  for name in ('reconstruction.png', 'interpolation.png', 'depth.png', 'pca.png'):
    assert os.path.getsize(os.path.join(workdir, 'analysis', name)) > 0


def test_export_gives_the_fixture_back_exactly(imported, tmp_path):
  workdir, _ = imported
  outputs = [str(tmp_path / 'export.npz')] + ([str(tmp_path / 'export.pth.tar')] if torch else [])
  for o in outputs:
    code, output = in_process.command('experiments.export_weights', f'--workdir={workdir}',
                                      f'--output={o}')
    assert code == 0 and 'at step 0' in output and 'num_batches_tracked 3' in output, output
  expected = authors.load_state_dict(NPZ)
  assert_same_state_dict(authors.load_state_dict(outputs[0]), expected)
  if torch is not None:   # what the authors' --resume reads, with the fixture's entries
    checkpoint = torch.load(outputs[1], map_location='cpu', weights_only=True)
    assert list(checkpoint) == ['epoch', 'arch', 'state_dict', 'best_prec1', 'optimizer']
    authors_state = torch.load(PTH_TAR, map_location='cpu', weights_only=True)['state_dict']
    assert_same_state_dict({k: v.numpy() for k, v in checkpoint['state_dict'].items()},
                           {k: v.numpy() for k, v in authors_state.items()})


def test_main_fine_tunes_an_imported_run(evaluated, tmp_path):
  """Two SGD steps from the imported weights; the evaluate record of step 0 stays, once."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(evaluated[0], workdir)
  before = metrics.read_jsonl(workdir)
  output = command('experiments.main', f'--config={TINY_CONFIG}', f'--workdir={workdir}')
  assert 'Resuming from the checkpoint at step 0' in output
  assert runs.checkpoint_steps(workdir) == [0, 2]
  records = metrics.read_jsonl(workdir)
  assert [r for r in records if r['step'] == 0] == before
  assert [r['step'] for r in records if 'train/loss' in r or 'eval/loss' in r] == [2, 2]
  _, trained, _ = checkpoints.load_run(workdir)
  start = authors.to_variables(authors.load_state_dict(NPZ), tiny_config().model)
  assert not np.array_equal(trained['params']['classifier']['kernel'],
                            start['params']['classifier']['kernel'])
  result = runs.export_weights(workdir, str(tmp_path / 'fine_tuned.npz'))
  exported = authors.load_state_dict(result.path)
  assert result.step == 2 and exported['module.bn1.num_batches_tracked'] == 3 + 2


def _hidden_torch(tmp_path):
  """PYTHONPATH with a `torch` package that fails to import, as if PyTorch were missing."""
  package = tmp_path / 'no_torch' / 'torch'
  package.mkdir(parents=True)
  (package / '__init__.py').write_text("raise ImportError('No module named torch (hidden)')\n")
  return {'PYTHONPATH': f'{lib.REPO}{os.pathsep}{package.parent}'}


def test_bad_imports_end_in_one_line_and_write_nothing(imported, tmp_path):
  state_dict = dict(np.load(NPZ))
  missing = dict(state_dict)
  del missing['module.stack.2.bottleneck_block.5.weight']
  np.savez(tmp_path / 'missing.npz', **missing)
  unexpected = dict(state_dict, **{'module.stack.1.bottleneck_block.4.weight':
                                   np.zeros(6, np.float32)})
  np.savez(tmp_path / 'unexpected.npz', **unexpected)
  (tmp_path / 'notes.pth.tar').write_text('epoch 128\nbest_prec1 71.25\n')
  cases = [  # (weights, extra flags, environment, text the one error line contains)
      (tmp_path / 'missing.npz', [], None, '1 key(s) missing (stack.2.bottleneck_block.5.weight)'),
      (tmp_path / 'unexpected.npz', [], None,
       '1 unexpected key(s) (stack.1.bottleneck_block.4.weight)'),
      (NPZ, ['--config.model.num_classes=10'], None, 'The file implies model.num_classes=5'),
      (PTH_TAR, [], _hidden_torch(tmp_path), "needs PyTorch, which is not installed. Install "
                                             "the optional extra: pip install -e '.[torch]'"),
      (tmp_path / 'notes.pth.tar', [], None, 'is not a checkpoint'),
      (tmp_path / 'absent.npz', [], None, 'absent.npz: no such file'),
  ]
  processes = []
  for index, (weights, extra, env, _) in enumerate(cases):
    workdir = tmp_path / f'run{index}'
    if index % 2:
      workdir.mkdir()     # an existing empty directory stays empty
    processes.append(start('experiments.import_weights', *import_args(weights, workdir, *extra),
                           env=env))
    if len(processes) % 3 == 0:        # a few at a time on small machines
      processes[-3].wait()
  taken = imported[0]
  listing = sorted(os.listdir(taken))
  processes.append(start('experiments.import_weights', *import_args(NPZ, taken)))
  cases.append((NPZ, [], None, f'--workdir={taken} already holds checkpoints (steps [0]); '
                               'import into a new --workdir'))
  for index, ((_, extra, _, expected), process) in enumerate(zip(cases, processes)):
    code, output = lib.finish(process)
    assert code == 1 and 'Traceback' not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith(('Error:', 'FATAL'))]
    assert len(errors) == 1 and expected in errors[0], (extra, output[-2000:])
    if 'PyTorch' in expected:       # and the lines that make an .npz where PyTorch is
      assert 'np.savez(' in output
    if index < len(cases) - 1:
      workdir = tmp_path / f'run{index}'
      assert (os.listdir(workdir) == []) if index % 2 else not workdir.exists()
  assert sorted(os.listdir(taken)) == listing and runs.checkpoint_steps(taken) == [0]


def test_evaluate_can_set_every_dataset_field():
  """`experiments.evaluate --dataset.<field>` parses a field by its type in DATASET_FIELDS:
  it must name every field a source reads, with the type the configs give it."""
  from irevnet_jax.data import tfds_options
  assert set(input_pipeline.DATASET_FIELDS) == {
      'name', *input_pipeline.SYNTHETIC_FIELDS, *tfds_options.FIELDS}
  for name in ('injective', 'bijective', 'bijective_released', 'cifar10', 'resnet50'):
    config = importlib.import_module(f'experiments.configs.{name}').get_config()
    for field, value in config.dataset.items():
      if value is not None:
        assert isinstance(value, input_pipeline.DATASET_FIELDS[field]), (name, field, value)
