"""The commands as users meet them (issue 18): evaluate and analyze on an imported run with
--dataset.name=synthetic, records written once, resumed runs whose metrics.jsonl equals an
uninterrupted run's, the authors' CIFAR checkpoint, suggestions and console lines.

Library calls run in-process; one-line errors and signals run the commands as subprocesses.
"""
import json
import os
import re

import pytest

from irevnet_jax import metrics, train
from irevnet_jax.train import config as config_lib
import train_testlib as lib


def _records(workdir):
  """metrics.jsonl without timings."""
  return [{k: v for k, v in r.items() if k != 'steps_per_second'}
          for r in metrics.read_jsonl(str(workdir))]


def test_a_resumed_run_records_what_an_uninterrupted_run_records(tmp_path):
  """SIGTERM between log steps, then SIGTERM during an evaluation: the resumed run redoes
  that evaluation and its first train/* record averages the steps since the last one."""
  overrides = dict(eval_every_steps=8, eval_batch_size=8, num_train_steps=16)
  config = lib.make_config(**overrides)
  reference = tmp_path / 'reference'
  train.train_and_evaluate(config, str(reference))

  workdir = tmp_path / 'interrupted'
  args = lib.flag_args(**overrides) + [f'--workdir={workdir}', '--kill_signal=TERM']
  code, output = lib.finish(lib.start(args + ['--kill_at_step=5'], script=lib.HELPER))
  assert code == 143 and 'rerun the same command to resume' in output, output[-3000:]
  saved = max(r['step'] for r in [{'step': 0}] + metrics.read_jsonl(str(workdir)))
  assert saved == 0                     # nothing logged before step 8: the steps are kept aside
  code, output = lib.finish(lib.start(args + ['--kill_at_eval_batch=3'], script=lib.HELPER))
  assert code == 143, output[-3000:]
  assert not [r for r in metrics.read_jsonl(str(workdir)) if 'eval/loss' in r]
  train.train_and_evaluate(config, str(workdir))

  expected = _records(reference)
  assert [r['step'] for r in expected] == [8, 8, 16, 16]   # train/* and eval/* at 8 and 16
  assert _records(workdir) == expected


def test_batch_size_suggestions_keep_eight_examples_per_device():
  assert config_lib.suggested_batch_size(7, 4, config_lib.MIN_BN_EXAMPLES) == 32
  assert config_lib.suggested_batch_size(50, 4, config_lib.MIN_BN_EXAMPLES) == 52
  assert config_lib.suggested_batch_size(18, 4) == 20      # eval batches: the nearest multiple
  assert config_lib.suggested_batch_size(3, 4) == 4
