"""The metric writer: every record is in metrics.jsonl and in the TensorBoard event file when
`write` returns (a SIGKILL right after loses nothing, on a local disk and on gs://), and a
resumed writer drops the later records and makes TensorBoard drop the later points."""
import os
import signal
import subprocess
import sys

import pytest

from irevnet_jax.run import metrics, paths
import tensorboard_events
import train_testlib as lib

# Writes three records, then SIGKILLs itself: nothing runs after the last `write`.
_KILLED_WRITER = """
import os, signal, sys
from irevnet_jax.run import metrics
writer = metrics.MetricWriter(sys.argv[1])
for step in (1, 2, 3):
  writer.write(step, {'train/loss': step / 2, 'train/accuracy': step / 4})
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture(params=['local', 'gs'])
def workdir(request, tmp_path):
  if request.param == 'local':
    return str(tmp_path / 'run')
  return request.getfixturevalue('gcs') + '/runs/metrics'


def _logdir(workdir):
  return paths.join(workdir, 'tensorboard')


def test_records_written_before_a_sigkill_are_all_there(workdir):
  process = subprocess.run([sys.executable, '-c', _KILLED_WRITER, workdir], cwd=lib.REPO,
                           env=lib.env_with_devices(1), capture_output=True, text=True,
                           timeout=60)
  assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
  paths.refresh(workdir)
  assert [r['step'] for r in metrics.read_jsonl(workdir)] == [1, 2, 3]
  assert tensorboard_events.scalars(_logdir(workdir)) == {
      'train/loss': [(1, 0.5), (2, 1.0), (3, 1.5)],
      'train/accuracy': [(1, 0.25), (2, 0.5), (3, 0.75)]}


def test_a_resumed_writer_drops_later_records_and_points(workdir):
  first = metrics.MetricWriter(workdir)
  for step in (2, 4, 6):
    first.write(step, {'train/loss': float(step)})
  first.close()   # as if killed after checkpoint 4: steps 5 and 6 are done again
  resumed = metrics.MetricWriter(workdir, resume_step=4)
  resumed.write(6, {'train/loss': 60.0})
  resumed.close()
  paths.refresh(workdir)
  assert metrics.read_jsonl(workdir) == [{'step': 2, 'train/loss': 2.0},
                                         {'step': 4, 'train/loss': 4.0},
                                         {'step': 6, 'train/loss': 60.0}]
  files = tensorboard_events.event_files(_logdir(workdir))
  assert len(files) == 2    # one per writer, in the order they were created
  assert tensorboard_events.scalars(_logdir(workdir)) == {
      'train/loss': [(2, 2.0), (4, 4.0), (6, 60.0)]}
  # A writer that only adds records (experiments.evaluate) drops nothing.
  adding = metrics.MetricWriter(workdir, resume_step=0, append=True)
  adding.write(4, {'evaluate/loss': 1.0})
  adding.close()
  paths.refresh(workdir)
  assert [r['step'] for r in metrics.read_jsonl(workdir)] == [2, 4, 6, 4]
  assert tensorboard_events.scalars(_logdir(workdir)) == {
      'train/loss': [(2, 2.0), (4, 4.0), (6, 60.0)], 'evaluate/loss': [(4, 1.0)]}


def test_the_event_reader_sees_a_torn_tail_and_flipped_bytes(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(1, {'x': 1.0})
  writer.write(2, {'x': 2.0})
  writer.close()
  (path,) = tensorboard_events.event_files(str(tmp_path / 'tensorboard'))
  data = path.read_bytes()
  path.write_bytes(data[:-3])     # a writer killed in the middle of its last record
  assert tensorboard_events.scalars(str(tmp_path / 'tensorboard')) == {'x': [(1, 1.0)]}
  path.write_bytes(data[:-6] + bytes([data[-6] ^ 1]) + data[-5:])
  with pytest.raises(AssertionError):
    tensorboard_events.scalars(str(tmp_path / 'tensorboard'))
  assert os.listdir(tmp_path / 'tensorboard') == [path.name]
