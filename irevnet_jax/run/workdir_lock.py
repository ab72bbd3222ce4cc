"""One run at a time in a workdir: `WorkdirLock`, held by the primary process while it trains.

    <workdir>/.lock          held (flock) by the process that trains in it (local)
    <workdir>/.lease.json    the owner record of that process (gs://)

Locally the claim is `flock`, dropped by the kernel when its process dies. On gs:// the
claim is a lease record, taken and renewed only by conditional writes (`gcs_objects`: GCS
generation preconditions), so of any number of launches at once exactly one wins:

- a launch creates the record only if there is none, or replaces a stale one only if it is
  still the version it judged stale; the record carries a random token, the owner and its
  own `lease_seconds` (`$IREVNET_LEASE_SECONDS` of the run that wrote it, default 60);
- a record is stale when the store's time (the `Date` of its answer) is more than the
  record's own lease past the record's last write (its `updated`): no machine's clock and no
  other launch's lease length enters;
- the holder rewrites its record (only if still at its last generation) every quarter of
  the lease. It has LOST the lease when a renewal finds another token or no record, or when
  no renewal has succeeded for 3/4 of the lease by its monotonic clock (before any other
  launch can judge the record stale): `check()` then raises `LeaseLost`, and the training
  loop stops without writing anything more.

A run killed without release holds its lease until it expires. Other URL schemes are
refused: their stores offer no conditional write here.
"""
import datetime
import fcntl
import json
import os
import secrets
import socket
import threading
import time

from absl import logging

from irevnet_jax.errors import UserError
from irevnet_jax.run import gcs_objects, store_errors
from irevnet_jax.run.paths import is_url, join

LOCK_FILE = '.lock'
LEASE_FILE = '.lease.json'
OWNER_FILES = frozenset({LOCK_FILE, LEASE_FILE})
LOST_AFTER = 0.75     # of the lease: the holder stops when renewals have failed this long


class LeaseLost(UserError, OSError):
  """This run no longer owns its workdir (another run may); it must write nothing more."""


class WorkdirInUse(UserError, BlockingIOError):
  """Another run that is still alive holds the workdir (a BlockingIOError, as flock's)."""


def _owner() -> str:
  return (f'pid {os.getpid()} on {socket.gethostname()} since '
          f'{datetime.datetime.now().isoformat(timespec="seconds")}')


def lease_seconds() -> float:
  """The lease a run started now writes in its record: `$IREVNET_LEASE_SECONDS`, default 60."""
  return float(os.environ.get('IREVNET_LEASE_SECONDS', '60'))


def _decode(stored: gcs_objects.Stored) -> dict:
  try:
    record = json.loads(stored.data)
    return record if isinstance(record, dict) else {}
  except ValueError:
    return {}


class WorkdirLock:
  """An exclusive claim on a workdir while a run trains in it (the primary process only):
  `flock` on a local path, a renewed lease record on gs:// (module docstring). `check()`
  raises `LeaseLost` once the claim is gone; `release()` gives it up."""

  def __init__(self, workdir: str):
    self._file = self._renewer = self._lost = None
    self._stop = threading.Event()
    if not is_url(workdir):
      self._flock(workdir)
    elif workdir.startswith('gs://'):
      self._take_lease(workdir)
    else:
      raise UserError(
          f'--workdir={workdir}: run directories on object stores must be gs:// (one owner at '
          f'a time needs the conditional writes this runner makes on GCS); use gs:// or a '
          f'local path.')

  # --- local: flock -------------------------------------------------------------------------

  def _flock(self, workdir):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = open(self.path, 'a+')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      owner = self._file.read().strip() or 'another process'
      self._file.close()
      raise WorkdirInUse(f'{workdir} is in use by a run that is still alive ({owner}); '
                         f'wait for it to end, stop it, or pass another --workdir.') from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(_owner() + '\n')
    self._file.flush()

  # --- gs://: a lease record written with generation preconditions --------------------------

  def _take_lease(self, workdir):
    self.workdir, self.path = workdir, join(workdir, LEASE_FILE)
    self._found = self._last_error = None   # the record a failed write found; a renewal's error
    self._lease = lease_seconds()
    self._token = secrets.token_hex(16)
    self._data = json.dumps({'owner': _owner(), 'token': self._token,
                             'lease_seconds': self._lease}).encode()
    for _ in range(5):
      found, now = self._retried(gcs_objects.read, 'Reading the workdir lease')
      if found is not None:
        record = _decode(found)
        lease = float(record.get('lease_seconds', self._lease))   # the record's own lease
        age = now - found.updated
        if age <= lease:
          raise WorkdirInUse(
              f'{workdir} is in use by a run that is still alive ({record.get("owner", "?")}; '
              f'lease renewed {max(age, 0):.0f} s ago, it lasts {lease:.0f} s); wait for it to '
              f'end, stop it, or pass another --workdir (a run killed without release holds '
              f'it for {lease:.0f} s; deleting {self.path} then frees it at once).')
      if self._write(0 if found is None else found.generation, 'Taking the workdir lease'):
        break
    else:
      raise WorkdirInUse(f'{workdir}: other launches kept changing {self.path}; is a run '
                         f'starting there? Pass another --workdir or retry.')
    self._renewer = threading.Thread(target=self._keep_renewing, name='workdir-lease',
                                     daemon=True)
    self._renewer.start()

  def _retried(self, call, what, *args, renewing=False):
    """`call(self.path, *args)` with transient errors retried: patiently at launch, within a
    fraction of the lease when renewing (the next renewal retries again)."""
    if renewing:
      timeout = self._lease / 4
      return store_errors.retry(lambda: call(self.path, *args, timeout=timeout), what,
                                attempts=3, first_delay=self._lease / 16,
                                max_delay=self._lease / 8)
    return store_errors.retry(lambda: call(self.path, *args, timeout=10.0), what)

  def _write(self, if_generation: int, what: str, renewing=False) -> bool:
    """Writes this run's record over version `if_generation`; True if the record is this
    run's afterwards. A 412 may answer a retry of a write that went through (its answer
    lost): the record then carries this run's token, and counts as renewed when the store
    says it was written."""
    started = time.monotonic()
    try:
      mine = self._retried(gcs_objects.write, what, self._data, if_generation,
                           renewing=renewing)
      self._generation, self._renewed_at = mine.generation, started
      return True
    except gcs_objects.GenerationMismatch:
      found, now = self._retried(gcs_objects.read, what, renewing=renewing)
      self._found = None if found is None else _decode(found)
      if self._found is None or self._found.get('token') != self._token:
        return False
      self._generation = found.generation
      self._renewed_at = time.monotonic() - max(0.0, now + 1 - found.updated)  # Date: whole s
      return True

  def _keep_renewing(self):
    while not self._stop.wait(self._lease / 4):
      if self._silent_too_long():
        return
      try:
        if not self._write(self._generation, 'Renewing the workdir lease', renewing=True):
          owner = (self._found or {}).get('owner')
          self._lost = (f'it is now held by another run ({owner})' if owner else
                        f'its record {self.path} was deleted or replaced')
          return
      except Exception as error:  # pylint: disable=broad-except
        if isinstance(error, store_errors.StoreUnavailable) and error.__cause__ is not None:
          error = error.__cause__
        self._last_error = error
        deadline = datetime.datetime.now() + datetime.timedelta(
            seconds=self._renewed_at + LOST_AFTER * self._lease - time.monotonic())
        logging.warning('Could not renew the workdir lease %s (%s); this run stops unless a '
                        'renewal succeeds by %s.', self.path, store_errors.short(error),
                        deadline.isoformat(timespec='seconds'))

  def _silent_too_long(self) -> bool:
    """True (and the lease lost) once no renewal has succeeded for LOST_AFTER of the lease."""
    silent = time.monotonic() - self._renewed_at
    if self._lost is None and silent > LOST_AFTER * self._lease:
      since = datetime.datetime.now() - datetime.timedelta(seconds=silent)
      error = self._last_error
      self._lost = (f'its renewals have failed since {since.isoformat(timespec="seconds")} '
                    f'(longer than {LOST_AFTER:g} of its {self._lease:g} s lease'
                    + (f'; {store_errors.short(error)}' if error else '') +
                    '), so another launch may own it now')
    return self._lost is not None

  @property
  def lost(self) -> bool:
    """True once this run has lost its lease (never for flock)."""
    return self._renewer is not None and (self._lost is not None or self._silent_too_long())

  def check(self):
    """Raises LeaseLost (one line: why) once this run no longer owns its workdir. Cheap: call
    it before every write."""
    if self.lost:
      raise LeaseLost(f'This run lost the lease on {self.workdir}: {self._lost}; '
                      f'it stopped at once without writing anything more.')

  def release(self):
    """Gives the claim up: unlocks, or stops renewing and deletes the record if it is still
    this run's (a lost lease's record is left to whoever holds it)."""
    if self._file is not None and not self._file.closed:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
    if self._renewer is not None and not self._stop.is_set():
      self._stop.set()
      self._renewer.join()
      if not self.lost:
        try:
          self._retried(gcs_objects.delete, 'Releasing the workdir lease', self._generation)
        except (gcs_objects.GenerationMismatch, store_errors.StoreUnavailable) as error:
          logging.warning('Left the workdir lease %s in place: %s', self.path,
                          store_errors.short(error))
