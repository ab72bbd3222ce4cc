"""CRC-32 checksums of a checkpoint's arrays, computed in Orbax's background commit.

Orbax / TensorStore do not check the bytes of array chunks on read (a flipped
byte restores as a different value), so every checkpoint carries one CRC-32 per
array in its `checksums` item (`<step>/checksums/metadata`, JSON). `Handler`
computes them in the thread that writes the checkpoint, not in the training
thread, and Orbax commits the checkpoint only after they are written: a
checkpoint on disk always has its checksums. The file is the one Orbax's
`JsonCheckpointHandler` wrote for checkpoints of earlier versions.
"""
import dataclasses
import json
from typing import Any, Optional
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from irevnet_jax.errors import UserError

FILENAME = 'metadata'   # JsonCheckpointHandler's name for the file


class CorruptCheckpoint(UserError):
  """A checkpoint whose arrays fail their checksums, hold non-finite values or whose files
  are missing. `reason`: the message without `what`."""

  is_corruption = True    # evidence that the data is bad (`store_errors.is_corruption`)

  def __init__(self, what: str, reason: str):
    super().__init__(f'{what}: {reason}')
    self.reason = reason


def path_name(path) -> str:
  """'params/stages_0/first/...': the same for a dict tree and Orbax's raw restore of it."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def checksums(state) -> dict:
  """{array path: CRC-32 of its dtype, shape and bytes} for a host state."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    leaf = np.ascontiguousarray(leaf)
    header = f'{leaf.dtype.str}{leaf.shape}'.encode()
    out[path_name(path)] = f'{zlib.crc32(leaf.data, zlib.crc32(header)):08x}'
  return out


def verify(state, expected: Optional[dict], what: str):
  """Raises CorruptCheckpoint if an array of `state` fails its checksum in `expected` (arrays
  that `expected` does not name are not checked) or holds NaN / infinity."""
  got = checksums(state)
  bad = sorted(k for k in got if expected is not None and k in expected and got[k] != expected[k])
  if bad:
    raise CorruptCheckpoint(what, f'{len(bad)} array(s) fail their checksum, e.g. {bad[0]}')
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    leaf = np.asarray(leaf)
    if leaf.dtype.kind == 'f' and not np.isfinite(leaf).all():
      raise CorruptCheckpoint(what, f'non-finite values in {path_name(path)}')


class Handler(ocp.AsyncCheckpointHandler):
  """Orbax item handler: saves the checksums of a host state (`Save(state)`), restores the
  {path: checksum} dict (`Restore()`). Only the primary process writes."""

  def _write(self, directory, state):
    if jax.process_index() == 0:
      (directory / FILENAME).write_text(json.dumps(checksums(state)))

  async def async_save(self, directory, args: 'Save'):
    async def write():   # runs in Orbax's commit thread; zlib releases the GIL
      self._write(directory, args.state)
    return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name='checksums')]

  def save(self, directory, args: 'Save'):
    self._write(directory, args.state)

  def restore(self, directory, args: Optional['Restore'] = None) -> dict:
    del args
    path = directory / FILENAME
    if not path.exists():
      raise FileNotFoundError(f'{path} is missing')
    return json.loads(path.read_text())


@ocp.args.register_with_handler(Handler, for_save=True)
@dataclasses.dataclass
class Save(ocp.args.CheckpointArgs):
  state: Any     # the host tree being saved; not modified until the save has committed


@ocp.args.register_with_handler(Handler, for_restore=True)
@dataclasses.dataclass
class Restore(ocp.args.CheckpointArgs):
  pass
