"""JAX's persistent compilation cache (`enable`), for runs and tests."""

from __future__ import annotations

import jax

from bossnas_jax.infra import files


def enable(path: str) -> None:
  """Turns on JAX's persistent compilation cache in `path`, a folder or a bucket URL (compiles of
  ~1 s and up are reused)."""
  files.makedirs(path)
  jax.config.update("jax_compilation_cache_dir", files.absolute(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
