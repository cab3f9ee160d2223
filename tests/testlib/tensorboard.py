"""Reads TensorBoard event files back (no tensorboard package needed): tensorboardX's Event
protos from the TFRecord framing (length u64, its crc u32, the record, its crc u32)."""
import pathlib
import struct

from tensorboardX.proto import event_pb2


def events(folder: pathlib.Path) -> list:
  """Every Event of the event files in `folder`, file by file in name order."""
  out = []
  for path in sorted(pathlib.Path(folder).glob("events.out.tfevents.*")):
    data = path.read_bytes()
    at = 0
    while at < len(data):
      (n,) = struct.unpack("<Q", data[at:at + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[at + 12:at + 12 + n])
      out.append(event)
      at += 12 + n + 4
  return out


def summaries(folder: pathlib.Path) -> dict:
  """tag -> [(step, summary value)] in write order."""
  out = {}
  for e in events(folder):
    for v in e.summary.value:
      out.setdefault(v.tag, []).append((e.step, v))
  return out
