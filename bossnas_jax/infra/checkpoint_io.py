"""Verified Orbax checkpoints: save a pytree with a checksum per array, restore and verify.

Orbax restores an array whose data file has a flipped byte silently, with wrong values (orbax-
checkpoint 0.12.8: a byte flipped in a saved array's data file restores without an error). Every
save here therefore writes, next to the tree (`state` item), a JSON item (`meta`) holding the
SHA-256, shape and dtype of every array, and every restore recomputes them. `restore` falls back to
the newest step that verifies and says which steps it skipped.

    save(directory, step, state, meta={"config": ...})
    state, meta, step = restore(directory)                    # newest valid step
    state, meta, step = restore(directory, abstract=tree_of_ShapeDtypeStructs)   # sharded restore

Uses Orbax calls that work across its recent releases: CheckpointManager +
Composite(StandardSave, JsonSave).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from bossnas_jax.infra import errors, files, parallel

log = logging.getLogger(__name__)

CHECKSUM_KEY = "checksums"
FILE_MANIFEST = "bossnas_files.json"


class CheckpointError(errors.UserError, RuntimeError):
  """No checkpoint could be read and verified."""


def _path_name(path) -> str:
  parts = []
  for p in path:
    if isinstance(p, jax.tree_util.DictKey):
      parts.append(str(p.key))
    elif isinstance(p, jax.tree_util.SequenceKey):
      parts.append(str(p.idx))
    elif isinstance(p, jax.tree_util.GetAttrKey):
      parts.append(p.name)
    else:
      parts.append(str(p))
  return "/".join(parts)


def array_checksum(x) -> dict[str, Any]:
  a = np.ascontiguousarray(np.asarray(jax.device_get(x)))
  return {"sha256": hashlib.sha256(a.tobytes()).hexdigest(), "shape": list(a.shape),
          "dtype": str(a.dtype)}


def tree_checksums(tree) -> dict[str, dict[str, Any]]:
  """{'a/b/kernel': {'sha256', 'shape', 'dtype'}} for every array leaf."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_name(p): array_checksum(x) for p, x in leaves}


def verify(tree, checksums: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """Names of arrays that differ from `checksums` (or are missing / extra); empty if all match."""
  got = tree_checksums(tree)
  bad = [k for k in checksums if k not in got or got[k] != dict(checksums[k])]
  bad += [f"{k} (not in the checksums)" for k in got if k not in checksums]
  return bad


def _file_digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def _step_files(step_dir: str) -> dict[str, int]:
  """{relative path: size} of a step's files, the manifest itself left out."""
  return {rel: size for rel, size in files.tree_sizes(step_dir).items() if rel != FILE_MANIFEST}


def _fingerprint(step_dir: str, rel: str, size: int) -> str | int:
  """A file's SHA-256 on a disk; in a bucket its size, from the listing (reading every object
  back would double the checkpoint's traffic, and the store checks its objects' bytes itself;
  the array checksums still catch wrong values)."""
  return size if files.is_url(step_dir) else _file_digest(os.path.join(step_dir, rel))


def write_file_manifest(step_dir: str) -> None:
  """Records the SHA-256 (in a bucket: the size) of every file of a finished step.

  Checked before Orbax reads a step: a damaged file is then found without handing corrupt bytes
  to TensorStore, whose failure can leave XLA:CPU's in-process collectives waiting for a device.
  """
  manifest = {rel: _fingerprint(step_dir, rel, size)
              for rel, size in sorted(_step_files(step_dir).items())}
  files.write_json(os.path.join(step_dir, FILE_MANIFEST), manifest)


def check_file_manifest(step_dir: str) -> list[str]:
  """Problems with a step's files against its manifest (empty when none, or without one)."""
  path = os.path.join(step_dir, FILE_MANIFEST)
  if not files.exists(path):
    return []
  manifest = files.read_json(path)
  found = _step_files(step_dir)
  bad = [f"{rel} is missing" for rel in manifest if rel not in found]
  bad += [f"{rel} differs from what was written" for rel, want in manifest.items()
          if rel in found and _fingerprint(step_dir, rel, found[rel]) != want]
  return bad


def _manager(directory: str, max_to_keep: int | None = None) -> ocp.CheckpointManager:
  # Synchronous: `save` waits for the commit anyway, and Orbax's asynchronous commit measures its
  # time limit in wall time, so a process suspended during a commit (Ctrl-Z, a paused VM) died
  # with "TimeoutError: ChainedFuture ... timed out" when it continued.
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(files.absolute(directory), options=options)


def save(directory: str, step: int, state, meta: Mapping[str, Any] | None = None, *,
         max_to_keep: int | None = None) -> None:
  """Saves `state` (a pytree of arrays) and `meta` (JSON-able) as step `step`, with checksums.

  Blocks until the write is committed.
  """
  meta = dict(meta or {})
  if CHECKSUM_KEY in meta:
    raise ValueError(f"meta may not use the reserved key {CHECKSUM_KEY!r}.")
  meta[CHECKSUM_KEY] = tree_checksums(state)
  mngr = _manager(directory, max_to_keep)
  try:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)))
    mngr.wait_until_finished()
    if jax.process_index() == 0:
      write_file_manifest(os.path.join(files.absolute(directory), str(step)))
  finally:
    mngr.close()


def all_steps(directory: str) -> list[int]:
  if not files.isdir(directory):
    return []
  mngr = _manager(directory)
  try:
    return sorted(mngr.all_steps())
  finally:
    mngr.close()


def _restore_step(mngr, step: int, abstract):
  bad_files = check_file_manifest(os.path.join(str(mngr.directory), str(step)))
  if bad_files:
    shown = ", ".join(bad_files[:3]) + (f" and {len(bad_files) - 3} more" if len(bad_files) > 3
                                        else "")
    raise CheckpointError(f"step {step}: {shown}")
  restore = ocp.args.StandardRestore(abstract) if abstract is not None else \
      ocp.args.StandardRestore()
  out = mngr.restore(step, args=ocp.args.Composite(state=restore, meta=ocp.args.JsonRestore()))
  meta = dict(out["meta"])
  sums = meta.pop(CHECKSUM_KEY, None)
  if sums is None:
    raise CheckpointError(f"step {step} has no checksums; it was not written by checkpoint_io.")
  bad = verify(out["state"], sums)
  if bad:
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise CheckpointError(f"step {step}: checksum mismatch in {shown}")
  return out["state"], meta


def restore(directory: str, step: int | None = None, abstract=None, *,
            fallback: bool = True) -> tuple[Any, dict, int]:
  """Restores and verifies a checkpoint: (state, meta without checksums, step).

  `step=None` takes the newest step; if it fails to read or to verify and `fallback` is true, the
  next older one is tried, and so on. `abstract` (a tree of jax.ShapeDtypeStruct, with shardings
  where wanted) restores onto devices; without it arrays come back as numpy arrays.
  Raises CheckpointError naming every step tried and why it failed.
  """
  if not files.isdir(directory):
    raise CheckpointError(f"no checkpoint directory at {directory}.")
  mngr = _manager(directory)
  try:
    steps = sorted(mngr.all_steps(), reverse=True)
    if step is not None:
      if step not in steps:
        raise CheckpointError(f"{directory} has no step {step} (steps: {sorted(steps)}).")
      tries = [step]
    else:
      tries = steps if fallback else steps[:1]
    if not tries:
      raise CheckpointError(f"{directory} holds no checkpoint.")
    errors = []
    for s in tries:
      try:
        state, meta = _restore_step(mngr, s, abstract)
      except Exception as e:  # noqa: BLE001  (Orbax raises bare Exception / ValueError here)
        msg = f"step {s}: {type(e).__name__}: {e}"
        log.warning("checkpoint %s unusable, %s", directory, msg)
        errors.append(msg)
        continue
      if errors:
        log.warning("restored step %d of %s after skipping %d corrupt step(s)", s, directory,
                    len(errors))
      return state, meta, s
    raise CheckpointError(f"no valid checkpoint in {directory}:\n  " + "\n  ".join(errors))
  finally:
    mngr.close()


def host_zeros(make_state):
  """Numpy zeros shaped like `make_state()` (traced, never run): the `abstract` of a restore."""
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(make_state))


def resume(directory: str, make_state, mesh) -> tuple[Any, dict, int] | None:
  """(state replicated over `mesh`, meta, step) of the newest step of `directory` that verifies,
  or None when there is no checkpoint yet. Newer steps that failed are set aside.

  Restored to host memory and verified there, then placed: a sharded restore of a corrupt step
  can leave a device's queue waiting on a failed transfer, which later deadlocks the collectives
  of XLA:CPU's simulated devices.
  """
  if not all_steps(directory):
    return None
  state, meta, step = restore(directory, abstract=host_zeros(make_state))
  set_aside_newer(directory, step)
  return parallel.replicate(state, mesh), meta, step


def set_aside_newer(directory: str, step: int) -> None:
  """Moves the steps newer than `step` (the newest that verified) to `<directory>.corrupt/`, so
  that the resumed run can write those step numbers again; nothing is deleted."""
  for s in all_steps(directory):
    if s > step:
      dest = os.path.join(directory + ".corrupt", f"{s}-{int(time.time())}")
      files.move_tree(os.path.join(directory, str(s)), dest)
      print(f"checkpoint step {s} of {directory} failed verification; moved to {dest}",
            flush=True)
