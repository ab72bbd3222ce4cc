"""Fault injection under load (issue 27): the tiny digits run on gs:// (the GCS emulator)
behind a proxy (fault_proxy.py) that answers a share of the requests with 503, resets
connections and delays requests by seconds, while the run is SIGKILLed at random points
of its I/O and rerun until it finishes. Every attempt must resume from the newest
checkpoint committed on the store (none thrown away), any attempt that stops without being
killed must end in the runner's one `Error:` line, and the metrics and final parameters
must equal the uninterrupted run's (conftest `tiny_run`) bit for bit. The figures (requests
failed, reset, delayed; kills survived) are printed; FAULT_TRIAL_SEED=n draws others.

Not part of the README's test command (marker `fault_trial`, deselected in setup.cfg);
`.ci/run` runs it as a step of its own: `python -m pytest -q -n 0 -m fault_trial tests`.
"""
import json
import os
import random
import time
import urllib.parse
import urllib.request

import jax
import numpy as np
import pytest

import fault_proxy
import gcs_emulator
import train_testlib as lib
from irevnet_jax.run import checkpoints, metrics, paths

pytestmark = pytest.mark.fault_trial

SEED = int(os.environ.get('FAULT_TRIAL_SEED', '53'))   # another seed: other faults, kills
FAULTS = {'fail': 0.05, 'reset': 0.02, 'delay': 0.03}    # shares of all requests
DELAY_SECONDS = (1.0, 3.0)
KILLS = 5              # the first KILLS attempts are each killed at a random request ...
KILL_REQUESTS = (1, 300)   # ... drawn from this range (a fresh tiny run makes ~370)
LEASE_SECONDS = 6      # renewed every 1.5 s; lost (the run stops) after 4.5 s without
MAX_ATTEMPTS = 12
TRIAL_SECONDS = 480    # all attempts together (a fresh tiny run takes ~15-45 s)
TIMING_KEYS = ('steps_per_second',)   # the only fields that differ between equal runs


def _records(records):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _start(output):
  """The step an attempt resumed from (0: a fresh start), None if it died before it said."""
  for line in output.splitlines():
    if line.startswith('Resuming from the checkpoint at step'):
      return int(line.split('step ', 1)[1].split()[0])
  return 0 if ' parameters; ' in output else None


def _committed_steps(emulator_url: str, workdir: str):
  """The checkpoint steps committed in `workdir` now (Orbax's `commit_success.txt` on GCS),
  read from the emulator itself, past the proxy and its faults."""
  prefix = workdir.split('/', 3)[3] + '/checkpoints/'
  names, token = [], ''
  while True:
    query = urllib.parse.urlencode({'prefix': prefix, 'pageToken': token})
    with urllib.request.urlopen(f'{emulator_url}/storage/v1/b/{gcs_emulator.BUCKET}/o?{query}',
                                timeout=30) as answer:
      listing = json.loads(answer.read())
    names += [item['name'][len(prefix):] for item in listing.get('items', [])]
    token = listing.get('nextPageToken')
    if not token:
      return sorted(int(n.split('/')[0]) for n in names
                    if n.split('/')[1:] == ['commit_success.txt'] and n.split('/')[0].isdigit())


@pytest.fixture
def faulty_gcs(monkeypatch):
  """(the proxy, the emulator's URL, 'gs://<bucket>'): the emulator behind a FaultProxy;
  this process and the commands it starts reach the store through the proxy only."""
  emulator = gcs_emulator.Emulator()
  proxy = fault_proxy.FaultProxy(emulator.url, seed=SEED, delay_seconds=DELAY_SECONDS,
                                 lifetime=900, **FAULTS).start()
  for key, value in emulator.env.items():
    monkeypatch.setenv(key, value.replace(emulator.url, proxy.url))
  monkeypatch.setenv('IREVNET_LEASE_SECONDS', str(LEASE_SECONDS))
  monkeypatch.delenv('EPATH_USE_TF', raising=False)
  paths.use_fsspec_for_urls()
  yield proxy, emulator.url, f'gs://{gcs_emulator.BUCKET}'
  proxy.stop()
  emulator.stop()


def test_a_gs_run_through_faults_and_kills_ends_bit_identical(faulty_gcs, tiny_run, capsys,
                                                             tmp_path):
  proxy, emulator_url, bucket = faulty_gcs
  workdir = f'{bucket}/runs/faults'
  args = lib.flag_args() + [f'--workdir={workdir}']
  draw = random.Random(SEED)
  attempts = []   # (how it ended, detail)
  deadline = time.monotonic() + TRIAL_SECONDS
  while len(attempts) < MAX_ATTEMPTS and time.monotonic() < deadline:
    committed = _committed_steps(emulator_url, workdir)
    process = lib.start(args)
    kill_at = draw.randint(*KILL_REQUESTS) if len(attempts) < KILLS else None
    if kill_at is not None:
      proxy.arm_kill(process.pid, kill_at)
    code, output = lib.finish(process, timeout=max(deadline - time.monotonic(), 60))
    proxy.disarm_kill()
    (tmp_path / f'attempt_{len(attempts) + 1}.log').write_text(output)   # for a failure
    start = _start(output)
    # No good checkpoint thrown away: each attempt resumes from the newest committed one.
    assert start in (None, max(committed, default=0)), (
        f'attempt {len(attempts) + 1} started at step {start} with checkpoints {committed} '
        f'committed:\n{output[-6000:]}')
    if code == 0:
      attempts.append(('finished', f'from step {start}'))
      break
    if code == -9:
      attempts.append(('killed', f'from step {start}, at its request {kill_at}'))
      time.sleep(LEASE_SECONDS)     # the killed run's lease runs out
      continue
    # Any other ending must be the runner's one clear line, never a traceback.
    assert 'Traceback' not in output and output.strip().splitlines()[-1].startswith('Error:'), (
        f'attempt {len(attempts) + 1} ended with {code}:\n{output[-6000:]}')
    attempts.append(('refused' if 'still alive' in output else 'stopped',
                     f'from step {start}: {output.strip().splitlines()[-1]}'))
    time.sleep(1.0 if 'still alive' in output else LEASE_SECONDS)
  counts = proxy.snapshot()
  summary = (f'{len(attempts)} attempts (outputs in {tmp_path}), '
             f'{counts.get("killed", 0)} kills survived; '
             f'requests: {counts.get("requests", 0)}, failed (503): {counts.get("failed", 0)}, '
             f'reset: {counts.get("reset", 0)}, delayed: {counts.get("delayed", 0)}, '
             f'forwarded: {counts.get("forwarded", 0)}')
  with capsys.disabled():    # the figures show in every run of the trial, -q or not
    print('\n'.join([f'\nfault trial (seed {SEED}): {summary}'] +
                    [f'  {how}: {detail}' for how, detail in attempts]))
  assert attempts[-1][0] == 'finished', summary
  assert counts.get('killed', 0) >= 2 and counts.get('failed', 0) > 0, summary
  assert counts.get('reset', 0) > 0 and counts.get('delayed', 0) > 0, summary

  proxy.set_rates(0, 0, 0)    # the checks read the outcome as it is, without faults
  paths.refresh(workdir)
  _, variables, step = checkpoints.load_run(workdir)
  assert step == 24, summary
  for name in ('params', 'batch_stats'):
    for got, want in zip(*(map(np.asarray, jax.tree_util.tree_leaves(t))
                           for t in (variables[name], tiny_run[1].state[name]))):
      np.testing.assert_array_equal(got, want)
  assert _records(metrics.read_jsonl(workdir)) == _records(metrics.read_jsonl(tiny_run[0]))
