"""Processes for the lease tests (tests/test_lease.py), two roles:

    python tests/lease_helper.py contend WORKDIR
        one launcher: on each `go` line of stdin it tries `WorkdirLock(WORKDIR)` and prints
        `won <pid>` or `refused <412s> <one-line error>` (412s: how many of its conditional
        writes found the record changed, i.e. lost a race at the write); on `release` the
        winner releases; prints `ready` once imported, `released` after each release.

    FAIL_RENEWALS_FILE=PATH python tests/lease_helper.py train <experiments.main flags>
        `python -m experiments.main` whose lease renewals fail (connection reset) from the
        moment PATH exists: a holder cut off from the store while it trains.
"""
import os
import sys
import threading

from irevnet_jax.run import gcs_objects, workdir_lock


def contend(workdir):
  mismatches = [0]
  write = gcs_objects.write

  def counted_write(*args, **kwargs):
    try:
      return write(*args, **kwargs)
    except gcs_objects.GenerationMismatch:
      mismatches[0] += 1
      raise
  gcs_objects.write = counted_write
  lock = None
  print('ready', flush=True)
  for line in sys.stdin:
    if line.strip() == 'go':
      mismatches[0] = 0
      try:
        lock = workdir_lock.WorkdirLock(workdir)
        print(f'won {os.getpid()} {mismatches[0]}', flush=True)
      except BlockingIOError as error:
        print(f'refused {mismatches[0]} {error}', flush=True)
    elif line.strip() == 'release':
      if lock is not None:
        lock.release()
        lock = None
      print('released', flush=True)


def train(argv):
  fail_file = os.environ['FAIL_RENEWALS_FILE']
  request = gcs_objects._request  # pylint: disable=protected-access

  def failing(*args, **kwargs):
    if threading.current_thread().name == 'workdir-lease' and os.path.exists(fail_file):
      raise ConnectionResetError('injected: the store does not answer')
    return request(*args, **kwargs)
  gcs_objects._request = failing  # pylint: disable=protected-access

  from experiments import cli, main as experiment_main  # pylint: disable=g-import-not-at-top
  sys.argv = [sys.argv[0]] + argv
  cli.run(experiment_main.main)


if __name__ == '__main__':
  if sys.argv[1] == 'contend':
    contend(sys.argv[2])
  else:
    train(sys.argv[2:])
