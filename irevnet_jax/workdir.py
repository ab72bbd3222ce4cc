"""A run's directory: who owns it, and the config it was trained with.

    <workdir>/config.json            the config of the run (the latest, when it changed)
    <workdir>/config_history.jsonl   earlier configs, one JSON line per accepted change
    <workdir>/.lock                  held (flock) by the process that trains in it

A workdir belongs to one run at a time: `WorkdirLock` refuses a second run
while the first is alive; the kernel drops the lock when its process dies, so a
killed run never leaves it stuck. A resume may change only the fields in
`CHANGEABLE_FIELDS` (how often to log, evaluate and save; where the data is);
any other change is refused unless allowed, and then recorded in the history.
"""
import datetime
import fcntl
import json
import os
import socket
from typing import Dict, Optional, Tuple

import ml_collections

CONFIG_FILE = 'config.json'
HISTORY_FILE = 'config_history.jsonl'
LOCK_FILE = '.lock'

# Fields a resumed run may change freely: they do not change what is trained.
CHANGEABLE_FIELDS = frozenset({
    'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
    'async_checkpoints', 'eval_batch_size', 'eval_inversion_examples', 'num_devices',
    'parallel', 'model.backprop', 'model.block_scan', 'dataset.data_dir', 'dataset.manual_dir',
    'dataset.cpu_threads',
})


def check_workdir(workdir: str) -> str:
  """The absolute path of `workdir`, created if missing; OSError naming the fix if it
  cannot be a run directory."""
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise NotADirectoryError(f'--workdir={workdir} is a file, not a directory; pass a new '
                             f'or existing directory.')
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as error:
    raise OSError(f'Cannot create --workdir={workdir}: {error.strerror}.') from None
  if not os.access(path, os.W_OK):
    raise PermissionError(f'--workdir={workdir} is not writable.')
  return path


class WorkdirLock:
  """An exclusive lock on a workdir, held while a run trains in it (process 0 only)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = open(self.path, 'a+')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      owner = self._file.read().strip() or 'another process'
      self._file.close()
      raise BlockingIOError(f'{workdir} is in use by a run that is still alive ({owner}); '
                            f'wait for it to end, stop it, or pass another --workdir.') from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f'pid {os.getpid()} on {socket.gethostname()} since '
                     f'{datetime.datetime.now().isoformat(timespec="seconds")}\n')
    self._file.flush()

  def release(self):
    if not self._file.closed:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()


def _tuples(value):
  """JSON lists back to the tuples that configs use."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def write_config(workdir: str, config: ml_collections.ConfigDict):
  """Writes `<workdir>/config.json` atomically (process 0 only)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + '.tmp', 'w') as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(path + '.tmp', path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'No {CONFIG_FILE} in {workdir!r}: is it the workdir of a run '
                            f'(python -m experiments.main --workdir=...)?')
  with open(path) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))


def _flat(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def config_changes(old, new) -> Dict[str, Tuple[object, object]]:
  """{field: (old value, new value)} of the fields that differ and matter for training.
  Fields present on one side only (added or retired by a code change) are not compared."""
  old_flat = _flat(json.loads(old.to_json()))
  new_flat = _flat(json.loads(new.to_json()))
  return {k: (old_flat[k], new_flat[k]) for k in sorted(old_flat.keys() & new_flat.keys())
          if old_flat[k] != new_flat[k] and k not in CHANGEABLE_FIELDS}


def record_config(workdir: str, config, resume_step: Optional[int], allow_change: bool):
  """Writes config.json for a new run, or checks a resumed run's config against it.

  A resume with changed training fields raises ValueError listing them, unless
  `allow_change`; then the old config goes to config_history.jsonl (with the step
  and the changes) before config.json is replaced.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if resume_step is not None and os.path.exists(path):
    old = read_config(workdir)
    changes = config_changes(old, config)
    if changes and not allow_change:
      listed = '; '.join(f'{k}: {a!r} -> {b!r}' for k, a, b in
                         ((k, *v) for k, v in changes.items()))
      raise ValueError(f'Resuming {workdir} at step {resume_step} with changed training '
                       f'field(s): {listed}. Pass --allow_config_change to go on with the new '
                       f'values (the old config is kept in {HISTORY_FILE}), undo the change, '
                       f'or use a new --workdir.')
    if changes:
      record = {'replaced_at_step': resume_step,
                'time': datetime.datetime.now().isoformat(timespec='seconds'),
                'changes': {k: list(v) for k, v in changes.items()},
                'config': json.loads(old.to_json())}
      with open(os.path.join(workdir, HISTORY_FILE), 'a') as f:
        f.write(json.dumps(record, sort_keys=True) + '\n')
  write_config(workdir, config)
