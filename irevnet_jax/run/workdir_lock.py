"""One run at a time in a workdir: `WorkdirLock`, held by the primary process while it trains.

    <workdir>/.lock          held (flock) by the process that trains in it (local)
    <workdir>/.lease.json    the owner record of that process (object stores)

Locally the claim is `flock`, dropped by the kernel when its process dies. Object stores
have no locks: the owner writes a lease record and renews it every quarter of the lease;
a run is refused while the record is fresher than the lease (`lease_seconds()`:
`$IREVNET_LEASE_SECONDS`, default 60). That stops a second launch on a live run; it is
advisory (two launches within the same second can both win, as there is no atomic
create-if-absent through epath), and a killed run's lease blocks a rerun until it expires.
"""
import datetime
import fcntl
import json
import os
import socket
import threading
import time
from typing import Optional

from absl import logging
from etils import epath

from irevnet_jax.run.paths import is_url, join

LOCK_FILE = '.lock'
LEASE_FILE = '.lease.json'
OWNER_FILES = frozenset({LOCK_FILE, LEASE_FILE})


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
