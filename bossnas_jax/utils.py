"""Small process-level helpers shared by entry points and tests."""

from __future__ import annotations

import os

import jax


def enable_compilation_cache(path: str) -> None:
  """Turns on JAX's persistent compilation cache in `path` (compiles of ~1 s and up are reused)."""
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


class WorkdirError(ValueError):
  """A workdir this library cannot write to."""


def check_workdir(path: str) -> str:
  """Returns `path` if it is a file-system path; a URL (gs://, s3://, ...) is an error.

  Checkpoints could go to a bucket directly (Orbax writes there), but rank files, metrics and the
  progress files are appended to and renamed into place, which object stores do not do; a bucket
  mounted as a file system (Cloud Storage FUSE) gives those operations to every host.
  """
  if "://" in path:
    raise WorkdirError(
        f"--workdir {path!r} is a URL; the workdir must be a file-system path. On Cloud TPU or "
        f"GPU hosts mount the bucket on every host (e.g. `gcsfuse --implicit-dirs BUCKET "
        f"/mnt/BUCKET`) and pass --workdir /mnt/BUCKET/...; data_dir may stay a gs:// URL.")
  return path
