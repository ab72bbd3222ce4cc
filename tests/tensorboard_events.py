"""TensorBoard scalars of a log directory (local or gs://) as TensorBoard's loader sees them,
without `tensorboard` (not installed): TFRecord framing with its CRCs, tensorboardX's Event
proto, event files read in name order, and a `SessionLog.START` event at step s dropping
the points seen before at steps >= s (tensorboard's EventAccumulator, file_version 2).
"""
import struct

from etils import epath
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c


def records(data: bytes):
  """The records of one TFRecord file; a torn last record (a writer killed mid-write) ends
  the list, a CRC mismatch is an AssertionError."""
  out, at = [], 0
  while at + 12 <= len(data):
    header = data[at:at + 8]
    (length,) = struct.unpack('<Q', header)
    assert struct.unpack('<I', data[at + 8:at + 12])[0] == masked_crc32c(header), at
    end = at + 12 + length + 4
    if end > len(data):
      break
    body = data[at + 12:at + 12 + length]
    assert struct.unpack('<I', data[end - 4:end])[0] == masked_crc32c(body), at
    out.append(body)
    at = end
  return out


def event_files(logdir: str):
  return sorted((p for p in epath.Path(logdir).iterdir() if 'tfevents' in p.name),
                key=lambda p: p.name)


def events(logdir: str):
  """Every Event of every event file under `logdir`, files in name order."""
  out = []
  for path in event_files(logdir):
    for body in records(path.read_bytes()):
      event = event_pb2.Event()
      event.ParseFromString(body)
      out.append(event)
  return out


def scalars(logdir: str, skip=()):
  """{tag: [(step, value), ...] in the order written} after TensorBoard's purges; tags in
  `skip` left out."""
  points = {}
  for event in events(logdir):
    if event.HasField('session_log') and event.session_log.status == event_pb2.SessionLog.START:
      points = {tag: [(s, v) for s, v in seen if s < event.step] for tag, seen in points.items()}
    for value in event.summary.value:
      if value.tag not in skip:
        points.setdefault(value.tag, []).append((event.step, value.simple_value))
  return points
