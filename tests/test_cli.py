"""The command line as a user meets it: bad input ends in one line, a run owns its workdir,
resumes refuse silent changes, failures (corrupt checkpoints, non-finite state, a full
disk, SIGTERM during evaluation) stop cleanly, and the README's Python snippet runs."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from irevnet_jax.run import checkpoints, checksums, metrics, workdir_lock

from irevnet_jax import train
from irevnet_jax.errors import UserError
from irevnet_jax.train import state as state_lib
import train_testlib as lib

BIJECTIVE = os.path.join(lib.REPO, 'experiments', 'configs', 'bijective.py')

# (extra flags, text the one-line error must contain). The runs share a workdir prefix.
BAD_INPUTS = [
    (['--config.batchsize=3'], "--config.batchsize: the config has no field 'batchsize'. "
                               "Did you mean 'batch_size'?"),
    (['--config.model.blokcs=(1,1)'], "'blokcs'. Did you mean 'blocks'?"),
    (['--config=/nonexistent/config.py'], '--config=/nonexistent/config.py: cannot load the '
                                          'config file (No such file or directory).'),
    (['--config.batch_size=abc'], '--config.batch_size=abc'),
    (['--config.lr_schedule=linear'], "lr_schedule='linear'"),
    (['--config.learning_rate=nan'], 'learning_rate=nan must be a finite number'),
    (['--config.learning_rate=-0.1'], 'learning_rate=-0.1 must be > 0'),
    (['--config.seed=-1'], 'seed=-1 must be an integer'),
    (['--config.keep_checkpoints=0'], 'keep_checkpoints=0 must be a positive integer, e.g. 3'),
    (['--config.batch_size=18'], 'batch_size=18 is not divisible by the 4 devices'),
    (['--config.dataset.name=mnistx'], "dataset.name='mnistx'"),
    (['--config.model.input_shape=(30,30,1)'], 'model.input_shape=(30, 30, 1)'),
    (['--config.train_dtype=float16'], 'float16 needs loss scaling'),
    (['--workdir=WORKDIR_FILE'], 'is a file, not a directory'),
    (['--workdir=WORKDIR_FILE/run'], 'Cannot create --workdir=WORKDIR_FILE/run: Not a directory.'),
    (['unexpected_argument'], "Unexpected arguments: ['unexpected_argument']"),
]


def test_bad_inputs_end_in_one_clear_line(tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('not a directory')
  processes = []
  for index, (extra, _) in enumerate(BAD_INPUTS):
    args = [f'--config={lib.DIGITS_CONFIG}', f'--workdir={tmp_path / f"run{index}"}']
    args += [a.replace('WORKDIR_FILE', str(a_file)) for a in extra]
    processes.append(lib.start(args))
    if len(processes) % 3 == 0:        # a few at a time on small machines
      processes[-3].wait()
  for (extra, expected), process in zip(BAD_INPUTS, processes):
    code, output = lib.finish(process)
    assert code != 0, (extra, output[-2000:])
    assert 'Traceback' not in output, (extra, output[-3000:])
    error_lines = [l for l in output.splitlines() if l.startswith(('Error:', 'FATAL'))]
    expected = expected.replace('WORKDIR_FILE', str(a_file))
    assert len(error_lines) == 1 and expected in error_lines[0], (extra, output[-2000:])


# A command whose main ends in a UserError raised deep in the package (a directory that is no
# run), or in a ValueError of a bug (numpy's, in no UserError).
ERRORS_COMMAND = """
from absl import flags
import numpy as np
from experiments import cli
from irevnet_jax.run import run_config

flags.DEFINE_enum('case', None, ['user', 'bug'], '')

def main(argv):
  if flags.FLAGS.case == 'user':
    run_config.read_config('/nonexistent/run')
  np.zeros(3).reshape(2)

cli.run(main)
"""


def test_a_user_error_ends_in_one_line_and_a_bug_in_its_traceback(tmp_path):
  script = tmp_path / 'command.py'
  script.write_text(ERRORS_COMMAND)
  cases = [['--case=user'], ['--case=user', '--verbose'], ['--case=bug']]
  processes = [lib.start(args, num_devices=1, script=str(script)) for args in cases]
  (user, one_line), (verbose, user_traceback), (bug, bug_traceback) = map(lib.finish, processes)
  assert user == 1 and one_line.strip().splitlines()[-1] == (
      "Error: No config.json in '/nonexistent/run': is it the workdir of a run "
      "(python -m experiments.main --workdir=...)?"), one_line[-2000:]
  assert 'Traceback' not in one_line, one_line[-2000:]
  assert verbose == 1 and 'Traceback' in user_traceback, user_traceback[-2000:]
  assert 'irevnet_jax.errors.UserError: No config.json' in user_traceback
  assert bug == 1 and 'Traceback' in bug_traceback and 'Error: ' not in bug_traceback.replace(
      'ValueError: ', ''), bug_traceback[-2000:]
  assert bug_traceback.strip().splitlines()[-1].startswith('ValueError: cannot reshape')


@pytest.mark.processes   # kills: a second step of .ci/run
def test_a_second_run_on_a_live_workdir_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from irevnet_jax.run import workdir_lock; '
       'lock = workdir_lock.WorkdirLock(sys.argv[1]); print("locked", flush=True); time.sleep(600)',
       str(tmp_path)], cwd=lib.REPO, env=lib.env_with_devices(1), stdout=subprocess.PIPE,
      text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    code, output = lib.finish(lib.start(lib.flag_args() + [f'--workdir={tmp_path}']))
    assert code == 1 and 'Traceback' not in output
    assert re.search(r'Error: .* is in use by a run that is still alive \(pid \d+', output)
    assert not os.path.exists(tmp_path / 'checkpoints')      # nothing was touched
  finally:
    holder.kill()
    holder.wait()
  workdir_lock.WorkdirLock(str(tmp_path)).release()           # SIGKILL released it


def test_resume_with_a_changed_training_field_is_refused_unless_allowed(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(lib.make_config(num_train_steps=8), workdir)
  changed = lib.make_config(num_train_steps=16, batch_size=64)
  with pytest.raises(ValueError, match=r'changed training field\(s\): batch_size: 32 -> 64; '
                                       r'num_train_steps: 8 -> 16\. Pass --allow_config_change'):
    train.train_and_evaluate(changed, workdir)
  assert json.load(open(tmp_path / 'config.json'))['batch_size'] == 32   # not overwritten
  # Logging, evaluation and checkpoint intervals may change freely.
  train.train_and_evaluate(lib.make_config(num_train_steps=8, log_every_steps=4), workdir)
  result = train.train_and_evaluate(changed, workdir, allow_config_change=True)
  assert result.step == 16
  assert json.load(open(tmp_path / 'config.json'))['batch_size'] == 64
  history = [json.loads(l) for l in open(tmp_path / 'config_history.jsonl')]
  assert len(history) == 1 and history[0]['replaced_at_step'] == 8
  assert history[0]['changes']['batch_size'] == [32, 64]
  assert history[0]['config']['batch_size'] == 32


def _flip_a_byte_of_the_largest_data_file(step_dir):
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names
           if os.path.basename(root) == 'd']
  largest = max(files, key=os.path.getsize)
  data = bytearray(open(largest, 'rb').read())
  data[len(data) // 2] ^= 0x01
  open(largest, 'wb').write(bytes(data))


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_checkpoint_with_flipped_bytes_falls_back_to_the_previous_one(tmp_path, tiny_run):
  workdir = lib.copy_of_run(tiny_run, tmp_path)      # a finished run of make_config()
  _flip_a_byte_of_the_largest_data_file(os.path.join(workdir, 'checkpoints', '24'))
  _, _, step = checkpoints.load_run(workdir)
  assert step == 16
  result = train.train_and_evaluate(lib.make_config(), workdir)   # from 16, redoes 24
  assert os.listdir(os.path.join(workdir, 'corrupt_checkpoints'))
  lib.assert_trees_close(result.state, tiny_run[1].state, rtol=0, atol=0)


def test_checksums_and_non_finite_values_are_verified():
  state = {'params': {'w': np.arange(6, dtype=np.float32)}, 'step': np.int32(3)}
  sums = checksums.checksums(state)
  checksums.verify(state, sums, 'state')
  changed = {'params': {'w': state['params']['w'].copy()}, 'step': state['step']}
  changed['params']['w'][2] = np.nextafter(np.float32(2), np.float32(3))
  with pytest.raises(checksums.CorruptCheckpoint, match='fail their checksum.*params/w'):
    checksums.verify(changed, sums, 'state')
  changed['params']['w'][2] = np.inf
  with pytest.raises(checksums.CorruptCheckpoint, match='non-finite values in params/w'):
    checksums.verify(changed, None, 'state')


def test_infinite_batch_norm_statistics_stop_the_run_without_being_saved(tmp_path, monkeypatch):
  create = state_lib.create_state

  def with_infinite_variance(net, tx, seed):
    state = create(net, tx, seed)
    state['batch_stats']['head_norm']['var'] = np.full_like(
        state['batch_stats']['head_norm']['var'], np.inf)
    return state

  monkeypatch.setattr(state_lib, 'create_state', with_infinite_variance)
  config = lib.make_config(num_train_steps=4, log_every_steps=1, checkpoint_every_steps=1)
  with pytest.raises(UserError, match=r"Non-finite values in the state \("
                     r"batch_stats/head_norm/var\) at step 1; stopping, no checkpoint was saved"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not checkpoints.Checkpointer(str(tmp_path), keep=3).all_steps()


def test_a_failed_save_stops_the_run_with_one_line(tmp_path):
  """Writes beyond 40 KB fail (RLIMIT_FSIZE): the first checkpoint cannot be written."""
  args = lib.flag_args(num_train_steps=24) + [f'--workdir={tmp_path}', '--file_size_limit=40000']
  code, output = lib.finish(lib.start(args, script=lib.HELPER))
  assert code == 1 and 'Traceback' not in output, output[-3000:]
  errors = [l for l in output.splitlines() if l.startswith('Error:')]
  assert errors == [f'Error: Saving checkpoint 8 in {tmp_path}/checkpoints failed: File too '
                    'large; there is no earlier checkpoint. Free space or fix permissions, then '
                    'rerun the same command to resume'], output[-3000:]
  assert 'step 24/24' not in output and 'Done' not in output    # stopped, not at the end


@pytest.mark.processes   # signals to a running process: a second step of .ci/run
@pytest.mark.parametrize('signal_name, exit_code', [('TERM', 143), ('INT', 130)])
def test_a_signal_during_evaluation_stops_promptly_and_the_run_resumes(
    tmp_path, tiny_run, signal_name, exit_code):
  config = lib.make_config(eval_every_steps=8, eval_batch_size=4)   # 90 eval batches
  args = lib.flag_args(eval_every_steps=8, eval_batch_size=4) + [
      f'--workdir={tmp_path}', '--kill_at_eval_batch=3', f'--kill_signal={signal_name}']
  code, output = lib.finish(lib.start(args, script=lib.HELPER))
  assert code == exit_code, output[-3000:]
  assert 'Traceback' not in output
  assert checkpoints.Checkpointer(str(tmp_path), keep=3).all_steps() == [8]
  assert not [r for r in metrics.read_jsonl(str(tmp_path)) if 'eval/loss' in r]
  result = train.train_and_evaluate(config, str(tmp_path))
  # Evaluation settings do not change training: the uninterrupted tiny run is the reference.
  lib.assert_trees_close(result.state, tiny_run[1].state, rtol=0, atol=0)


def test_the_readme_python_snippet_runs_as_written():
  readme = open(os.path.join(lib.REPO, 'README.md')).read()
  snippet = re.search(r'## Using the model.*?```python\n(.*?)```', readme, re.S).group(1)
  namespace = {}
  exec(compile(snippet, 'README.md', 'exec'), namespace)   # pylint: disable=exec-used
  assert float(np.max(np.abs(np.asarray(namespace['x_again']) - namespace['x']))) < 1e-5
