"""A run's directory: who owns it, and the config it was trained with.

    <workdir>/config.json            the config of the run (the latest, when it changed)
    <workdir>/config_history.jsonl   earlier configs, one JSON line per accepted change
    <workdir>/.lock                  held (flock) by the process that trains in it (local)
    <workdir>/.lease.json            the owner record of that process (object stores)

A workdir is a local path or a URL of any filesystem that `etils.epath` (what
Orbax uses) reads: `gs://bucket/runs/x`, `s3://...`; URLs are never made
absolute. It belongs to one run at a time: `WorkdirLock` refuses a second run
while the first is alive. Locally that is `flock`, dropped by the kernel when
its process dies. Object stores have no locks: the owner writes a lease record
and renews it every `LEASE_SECONDS / 4`; a run is refused while the record is
fresher than `LEASE_SECONDS` (`IREVNET_LEASE_SECONDS`, default 60). That stops a
second launch on a live run; it is advisory (two launches within the same
second can both win, as there is no atomic create-if-absent through epath), and
a killed run's lease blocks a rerun until it expires. A resume may change only
the fields in `CHANGEABLE_FIELDS` (how often to log, evaluate and save; where the
data is); any other change is refused unless allowed, and then recorded in the
history when the resumed run first saves.
"""
import datetime
import fcntl
import json
import os
import socket
import threading
import time
from typing import Dict, Optional, Tuple

from absl import logging
from etils import epath
import ml_collections

CONFIG_FILE = 'config.json'
HISTORY_FILE = 'config_history.jsonl'
LOCK_FILE = '.lock'
LEASE_FILE = '.lease.json'
OWNER_FILES = frozenset({LOCK_FILE, LEASE_FILE})

# Fields a resumed run may change freely: they do not change what is trained.
CHANGEABLE_FIELDS = frozenset({
    'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
    'async_checkpoints', 'eval_batch_size', 'eval_inversion_examples', 'num_devices',
    'parallel', 'model.backprop', 'model.block_scan', 'dataset.data_dir', 'dataset.manual_dir',
    'dataset.cpu_threads',
})


def is_url(path) -> bool:
  """True for `scheme://...` paths (object stores), False for local ones."""
  return '://' in os.fspath(path)


def resolve(workdir) -> str:
  """A URL as it is; a local path made absolute (with `~` expanded)."""
  workdir = os.fspath(workdir)
  return workdir if is_url(workdir) else os.path.abspath(os.path.expanduser(workdir))


def join(workdir, *names) -> str:
  """`workdir/names...` as a string, for local paths and URLs alike."""
  return os.fspath(epath.Path(workdir).joinpath(*names))


def check_workdir(workdir: str) -> str:
  """The resolved path of `workdir` (a URL or an absolute local path), created if missing;
  OSError naming the fix if it cannot be a run directory."""
  path = resolve(workdir)
  node = epath.Path(path)
  if node.exists() and not node.is_dir():
    raise NotADirectoryError(f'--workdir={workdir} is a file, not a directory; pass a new '
                             f'or existing directory.')
  try:
    node.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise OSError(f'Cannot create --workdir={workdir}: {error.strerror or error}.') from None
  if not is_url(path) and not os.access(path, os.W_OK):
    raise PermissionError(f'--workdir={workdir} is not writable.')
  return path


def state(workdir) -> str:
  """'missing', 'unused' (exists, holds nothing but lock files) or 'run'."""
  node = epath.Path(resolve(workdir))
  if not node.is_dir():
    return 'missing'
  return 'run' if any(c.name not in OWNER_FILES for c in node.iterdir()) else 'unused'


def clean_up_refused(workdir: str, before: str):
  """Undoes what a refused run made in `workdir` (`before`: its `state` then) if it wrote
  nothing but lock files and empty folders: a folder it created goes, a folder that was
  there keeps only what it held."""
  node = epath.Path(workdir)
  if before == 'run' or not node.is_dir():
    return
  for _, _, files in node.walk():
    if any(name not in OWNER_FILES for name in files):
      return
  if before == 'missing':
    node.rmtree(missing_ok=True)
    return
  for child in node.iterdir():
    if child.is_dir():
      child.rmtree(missing_ok=True)
    else:
      child.unlink(missing_ok=True)


def _owner() -> str:
  return (f'pid {os.getpid()} on {socket.gethostname()} since '
          f'{datetime.datetime.now().isoformat(timespec="seconds")}')


def lease_seconds() -> float:
  return float(os.environ.get('IREVNET_LEASE_SECONDS', '60'))


class WorkdirLock:
  """An exclusive claim on a workdir while a run trains in it (the primary process only):
  `flock` on a local path, a renewed lease record on an object store (module docstring)."""

  def __init__(self, workdir: str):
    self._file = self._renewer = None
    self._stop = threading.Event()
    if is_url(workdir):
      self._take_lease(workdir)
    else:
      self._flock(workdir)

  def _flock(self, workdir):
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
    self._file.write(_owner() + '\n')
    self._file.flush()

  def _take_lease(self, workdir):
    self.path = join(workdir, LEASE_FILE)
    record, lease = self._read_lease(), lease_seconds()
    if record is not None:
      age = time.time() - float(record.get('renewed', 0))
      if age < lease:
        raise BlockingIOError(
            f'{workdir} is in use by a run that is still alive ({record.get("owner")}; lease '
            f'renewed {age:.0f} s ago); wait for it to end, stop it, or pass another --workdir '
            f'(a run killed without release holds it for {lease:.0f} s; deleting {self.path} '
            f'frees it at once).')
    self._record = {'owner': _owner(), 'lease_seconds': lease}
    self._renew()
    self._renewer = threading.Thread(target=self._keep_renewing, args=(lease / 4,),
                                     name='workdir-lease', daemon=True)
    self._renewer.start()

  def _read_lease(self) -> Optional[dict]:
    try:
      return json.loads(epath.Path(self.path).read_text())
    except (FileNotFoundError, ValueError):
      return None

  def _renew(self):
    self._record['renewed'] = time.time()
    epath.Path(self.path).write_text(json.dumps(self._record))

  def _keep_renewing(self, every):
    while not self._stop.wait(every):
      try:
        self._renew()
      except Exception as error:  # pylint: disable=broad-except
        logging.warning('Could not renew the workdir lease %s: %s', self.path, error)

  def release(self):
    if self._file is not None and not self._file.closed:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
    if self._renewer is not None and not self._stop.is_set():
      self._stop.set()
      self._renewer.join()
      if (self._read_lease() or {}).get('owner') == self._record['owner']:
        epath.Path(self.path).unlink(missing_ok=True)


def _tuples(value):
  """JSON lists back to the tuples that configs use."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def write_file(workdir: str, name: str, text: str):
  """Writes `<workdir>/<name>`: atomically on a local disk (a temporary file renamed);
  an object store replaces the object whole."""
  if is_url(workdir):
    epath.Path(join(workdir, name)).write_text(text)
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, name)
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


def write_config(workdir: str, config: ml_collections.ConfigDict):
  """Writes `<workdir>/config.json` (primary process only)."""
  write_file(workdir, CONFIG_FILE, config.to_json(indent=2, sort_keys=True))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = epath.Path(join(resolve(workdir), CONFIG_FILE))
  if not path.exists():
    raise FileNotFoundError(f'No {CONFIG_FILE} in {workdir!r}: is it the workdir of a run '
                            f'(python -m experiments.main --workdir=...)?')
  try:
    return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))
  except (ValueError, TypeError, AttributeError) as error:
    raise ValueError(f'{path} is not a valid config ({error}); restore it (earlier ones are '
                     f'in {HISTORY_FILE} if the config changed), or delete it and rerun '
                     f'experiments.main, which writes the config of its command.') from None


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


class ConfigRecord:
  """What `check_config_record` decided: `commit()` writes it (primary process only)."""

  def __init__(self, workdir, config, resume_step, history: Optional[dict]):
    self.workdir, self.config, self.resume_step = workdir, config, resume_step
    self._history = history
    self.committed = False

  def commit(self):
    """Appends the replaced config to the history (when it changed) and writes config.json;
    once."""
    if self.committed:
      return
    if self._history is not None:
      path = epath.Path(join(self.workdir, HISTORY_FILE))
      line = json.dumps(self._history, sort_keys=True) + '\n'
      if is_url(self.workdir):    # object stores cannot append: the object is replaced
        path.write_text((path.read_text() if path.exists() else '') + line)
      else:
        with open(path, 'a') as f:
          f.write(line)
    write_config(self.workdir, self.config)
    self.committed = True


def check_config_record(workdir: str, config, resume_step: Optional[int],
                        allow_change: bool) -> ConfigRecord:
  """Checks a resumed run's config against config.json; writes nothing.

  A resume with changed training fields raises ValueError listing them, unless
  `allow_change`; then the returned record's `commit()` (called when the resumed run
  first saves, so a run that stops before leaves config.json as it was) puts the old
  config in config_history.jsonl (with the step and the changes) and replaces config.json.
  """
  if resume_step is None or not epath.Path(join(workdir, CONFIG_FILE)).exists():
    return ConfigRecord(workdir, config, resume_step, None)
  old = read_config(workdir)
  changes = config_changes(old, config)
  if changes and not allow_change:
    listed = '; '.join(f'{k}: {a!r} -> {b!r}' for k, a, b in
                       ((k, *v) for k, v in changes.items()))
    raise ValueError(f'Resuming {workdir} at step {resume_step} with changed training '
                     f'field(s): {listed}. Pass --allow_config_change to go on with the new '
                     f'values (the old config is kept in {HISTORY_FILE}), undo the change, '
                     f'or use a new --workdir.')
  history = None
  if changes:
    history = {'replaced_at_step': resume_step,
               'time': datetime.datetime.now().isoformat(timespec='seconds'),
               'changes': {k: list(v) for k, v in changes.items()},
               'config': json.loads(old.to_json())}
  return ConfigRecord(workdir, config, resume_step, history)

