"""Run metrics: one JSON line per optimizer step in `metrics.jsonl`, and TensorBoard scalars.

The TensorBoard writer needs no TensorFlow: an event file is a TFRecord stream of `Event`
protocol buffers, and a scalar event is small enough to encode here by hand (field numbers from
tensorboard's event.proto / summary.proto: Event.wall_time = 1, step = 2, file_version = 3,
summary = 5; Summary.value = 1; Value.tag = 1, simple_value = 2).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time

import jax

from bossnas_jax.infra import files


def _crc32c_table():
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event_bytes(wall_time: float, step: int, *, scalars: dict[str, float] | None = None,
                file_version: str | None = None) -> bytes:
  out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
  if file_version is not None:
    out += _field_bytes(3, file_version.encode())
  if scalars:
    values = b"".join(
        _field_bytes(1, _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5)
                     + struct.pack("<f", float(v)))
        for tag, v in scalars.items())
    out += _field_bytes(5, values)
  return out


def record_bytes(data: bytes) -> bytes:
  """TFRecord framing: length, masked CRC of the length, data, masked CRC of the data."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I",
                                                                            masked_crc(data))


class Writer:
  """Appends metrics to workdir/metrics.jsonl and workdir/tb/events.*; only process 0 writes."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    self._jsonl = files.AppendLog(os.path.join(workdir, "metrics.jsonl"))
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self._events = files.AppendLog(os.path.join(workdir, "tb", name))
    self._events.write(record_bytes(event_bytes(time.time(), 0, file_version="brain.Event:2")))

  def write(self, *, step: int, block: int | None = None, **scalars: float) -> None:
    if not self.active:
      return
    now = time.time()
    row = {"time": now, "step": step, **({"block": block} if block is not None else {}),
           **scalars}
    self._jsonl.write(json.dumps(row) + "\n")
    prefix = f"block{block}/" if block is not None else ""
    self._events.write(record_bytes(event_bytes(
        now, step, scalars={prefix + k: v for k, v in scalars.items()})))

  def flush(self) -> None:
    """Uploads what a bucket has not received yet (a disk has it all already)."""
    if self.active:
      self._jsonl.flush()
      self._events.flush()

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._events.close()
