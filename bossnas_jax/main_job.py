"""The main job: train every block, rate, search and export (built up issue by issue).

`launch/train_blocks.py` is a thin wrapper around `run`.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections

from bossnas_jax import search_space as ss
from bossnas_jax import summary, utils
from bossnas_jax.models import supernet


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  utils.enable_compilation_cache(os.path.join(workdir, "jax_cache"))
  dims = summary.dims_from_config(config)
  summary.print_summary(config)
  key = jax.random.key(config.seed, impl="rbg")
  for b in range(ss.NUM_BLOCKS):
    t = time.perf_counter()
    variables = jax.block_until_ready(supernet.init_block(dims, b, jax.random.fold_in(key, b)))
    n = sum(x.size for x in jax.tree.leaves(variables["params"]))
    print(f"block {b}: built {n:,} parameters on {jax.devices()[0].platform} in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    del variables
