"""The files of a workdir, on a local disk or in a bucket (`gs://...`; any URL fsspec opens).

A bucket is not a file system: it has no appending, no renaming and no directories, and an object
is uploaded whole and replaces the previous one at once. So every write here is a whole-file write:
on a disk through a temporary name and `os.replace` (a killed run never leaves half a file), in a
bucket as one upload, which is atomic there. A log that grows (`AppendLog`) appends on a disk and,
in a bucket, keeps its text in memory and uploads it whole at most every `rewrite_interval`
seconds: Cloud Storage allows about one write per second to an object.
`os.path.join`, `dirname` and `basename` are right for URLs too; `abspath` is not (`absolute`).

Disk paths go through `os`, URLs through fsspec (gcsfs for gs://, the `gcs` extra). Orbax and
JAX's compilation cache reach buckets by themselves. Listings are never cached: another host may
have written since.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from typing import Any

from bossnas_jax.infra import errors

CONFIG_JSON = "config.json"  # A workdir's config: the main job's or a retraining's.
REWRITE_SECONDS = 30.0  # Between uploads of one growing object (metrics, events, progress).


class WorkdirError(errors.UserError, ValueError):
  """A workdir (or other output location) this library cannot use."""


def is_url(path: str) -> bool:
  return "://" in os.fspath(path)


def absolute(path: str) -> str:
  """An absolute disk path, or the URL unchanged."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(path)


def check_workdir(path: str) -> str:
  """Returns `path` if a run can write there; otherwise one WorkdirError that says what to fix.

  A URL needs its file-system package and an existing bucket; a disk path must not be a file.
  """
  path = os.fspath(path)
  if is_url(path):
    fs, inner = _fs(path)
    bucket = inner.split("/", 1)[0]
    try:
      found = fs.exists(bucket)
    except Exception as e:  # noqa: BLE001  (credentials, network: the client's own error text)
      raise WorkdirError(f"cannot reach the bucket of --workdir {path}: {type(e).__name__}: {e}. "
                         "Check the credentials and the network of this host.") from None
    if not found:
      raise WorkdirError(f"the bucket of --workdir {path} does not exist; create it first "
                         f"(gcloud storage buckets create {path.split('://')[0]}://{bucket}).")
  elif os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir {path} is a file; pass a folder.")
  return path


def rewrite_interval(path: str) -> float:
  """Seconds between rewrites of a growing file: none on a disk, REWRITE_SECONDS in a bucket."""
  return REWRITE_SECONDS if is_url(path) else 0.0


def _fs(url: str):
  """(fsspec file system, path inside it) of a URL, with listings never cached."""
  try:
    import fsspec  # (With gcsfs: the gcs extra.)

    fs, inner = fsspec.core.url_to_fs(url, use_listings_cache=False)
  except (ImportError, ValueError) as e:
    scheme = url.split("://", 1)[0]
    extra = " (pip install 'bossnas_jax[gcs]')" if scheme in ("gs", "gcs") else ""
    raise WorkdirError(f"cannot open {url}: {e}. Install the file-system package for "
                       f"{scheme}://{extra}.") from None
  return fs, inner


def _changed(fs, path: str) -> None:
  """Forgets the cached listings of `path` in every instance of this file system in the process:
  Orbax's (through etils.epath) caches listings for ever, and would otherwise still see, say, a
  checkpoint step that was just moved away."""
  for other in list(getattr(type(fs), "_cache", {}).values()):
    other.invalidate_cache(path)


def exists(path: str) -> bool:
  if is_url(path):
    fs, p = _fs(path)
    return fs.exists(p)
  return os.path.exists(path)


def isdir(path: str) -> bool:
  """A disk folder, or a URL prefix under which some object lies."""
  if is_url(path):
    fs, p = _fs(path)
    return fs.isdir(p)
  return os.path.isdir(path)


def isfile(path: str) -> bool:
  if is_url(path):
    fs, p = _fs(path)
    return fs.isfile(p)
  return os.path.isfile(path)


def makedirs(path: str) -> None:
  """Creates a disk folder; nothing in a bucket, where folders are only name prefixes."""
  if is_url(path):
    return
  try:
    os.makedirs(path, exist_ok=True)
  except FileExistsError:
    raise WorkdirError(f"{path} is a file, not a folder; pass a folder (--workdir, --out) or "
                       "move the file.") from None
  except OSError as e:
    raise WorkdirError(f"cannot create the folder {path}: {e.strerror}. Pass a folder this user "
                       "can write to.") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise WorkdirError(f"the folder {path} is not writable by this user; pass another one or "
                       "change its permissions.")


def listdir(path: str) -> list[str]:
  """Names (not paths) directly under `path`; [] if it does not exist."""
  if is_url(path):
    fs, p = _fs(path)
    if not fs.isdir(p):
      return []
    return sorted(os.path.basename(q.rstrip("/")) for q in fs.ls(p, detail=False))
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


def read_bytes(path: str) -> bytes:
  if is_url(path):
    fs, p = _fs(path)
    try:
      return fs.cat_file(p)
    except FileNotFoundError:
      raise FileNotFoundError(f"{path} does not exist") from None
  with open(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any:
  return json.loads(read_text(path))


def write_bytes(path: str, data: bytes) -> str:
  """Writes a whole file atomically: readers see the old content or the new, never a part."""
  if is_url(path):
    fs, p = _fs(path)
    fs.pipe_file(p, data)
    _changed(fs, p)
    return path
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  # Own temporary name per host and process: hosts sharing a disk may write the same file.
  tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)
  return path


def write_text(path: str, text: str) -> str:
  return write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any, **kwargs) -> str:
  return write_text(path, json.dumps(obj, **kwargs))


def remove(path: str) -> None:
  """Deletes one file; a missing one is fine."""
  if is_url(path):
    fs, p = _fs(path)
    try:
      fs.rm_file(p)
    except FileNotFoundError:
      return
    _changed(fs, p)
  elif os.path.exists(path):
    os.remove(path)


def rmtree(path: str) -> None:
  """Deletes a folder (or every object under a prefix); a missing one is fine."""
  if is_url(path):
    fs, p = _fs(path)
    if fs.exists(p):
      fs.rm(p, recursive=True)
      _changed(fs, p)
  elif os.path.isdir(path):
    shutil.rmtree(path)


def copy(src: str, dst: str) -> str:
  """Copies one file (disk or bucket, either way)."""
  return write_bytes(dst, read_bytes(src))


def tree_sizes(root: str) -> dict[str, int]:
  """{path relative to root: size in bytes} of every file under `root` (one listing in a bucket)."""
  if is_url(root):
    fs, p = _fs(root)
    p = p.rstrip("/")
    found = fs.find(p, detail=True)  # {} under a prefix that holds nothing.
    return {q[len(p) + 1:]: int(info["size"]) for q, info in found.items()
            if info.get("type") != "directory" and q.startswith(p + "/")}
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      full = os.path.join(folder, name)
      out[os.path.relpath(full, root)] = os.path.getsize(full)
  return out


def move_tree(src: str, dst: str) -> None:
  """Moves a folder: a rename on a disk; in a bucket every object is copied, then deleted."""
  if not is_url(src):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.replace(src, dst)
    return
  for rel in tree_sizes(src):
    copy(os.path.join(src, rel), os.path.join(dst, rel))
  rmtree(src)


class AppendLog:
  """A log file that grows: lines of text or binary records, appended in order.

  On a disk it is an ordinary file opened for appending and flushed after every write. In a bucket
  the whole content (what was there when opened, and everything written since) is uploaded again
  at most every `interval` seconds and on `close`, so a killed run loses at most that much.
  """

  def __init__(self, path: str, *, interval: float | None = None):
    self.path = path
    self.interval = rewrite_interval(path) if interval is None else float(interval)
    self._remote = is_url(path)
    if self._remote:
      self._buffer = bytearray(read_bytes(path) if exists(path) else b"")
      self._dirty, self._last = False, 0.0
    else:
      makedirs(os.path.dirname(path) or ".")
      self._file = open(path, "ab")  # noqa: SIM115  (closed in close())

  def write(self, data: str | bytes) -> None:
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    if not self._remote:
      self._file.write(raw)
      self._file.flush()
      return
    self._buffer += raw
    self._dirty = True
    if time.monotonic() - self._last >= self.interval:
      self.flush()

  def flush(self) -> None:
    if self._remote and self._dirty:
      write_bytes(self.path, bytes(self._buffer))
      self._dirty, self._last = False, time.monotonic()

  def close(self) -> None:
    if self._remote:
      self.flush()
    else:
      self._file.close()
