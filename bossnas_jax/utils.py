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
