"""One process of the 2-process tests in test_multihost.py.

    python tests/multihost_worker.py DATA_DIR WORKDIR OUT_PREFIX   (JAX_* variables set by the test)
      trains block 0 of `config_for` and writes this process's final state (online, target, LARS
      momentum) to OUT_PREFIX.{process}.npz;
    python tests/multihost_worker.py DATA_DIR WORKDIR --main_job
      runs the whole main job (4 blocks, ratings, search, export) on the same `config_for`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from train_utils import flat, tiny_config  # noqa: E402


def config_for(data_dir: str):
  """The tiny experiment on 32 images: 2 micro-batches of 16 (2 per device on 8 devices), 4
  paths each, accumulated into a single optimizer step. One step keeps the comparison tight:
  a later step would run its forward pass on weights that already differ by rounding, which
  batch normalisation over 2 images amplifies."""
  config = tiny_config(data_dir, epochs_per_block=1, accumulate_steps=2)
  config.data.train_split = "train[:32]"
  return config


def final_tree(state) -> dict:
  return flat({"online": state.online, "target": state.target,
               "momentum": state.opt.momentum})


def main(data_dir, workdir, out_prefix):
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  from bossnas_jax.infra import compile_cache, parallel
  from bossnas_jax.train import loop

  parallel.maybe_initialize_distributed()
  compile_cache.enable(os.environ["BOSSNAS_TEST_CACHE"])
  assert jax.process_count() == 2 and jax.device_count() == 8, (jax.process_count(),
                                                                jax.device_count())
  if out_prefix == "--main_job":
    from bossnas_jax import main_job

    main_job.run(config_for(data_dir), workdir)
    print(f"process {jax.process_index()}: main job done", flush=True)
    jax.distributed.shutdown()
    return
  config = config_for(data_dir)
  run = loop.Run.create(config, workdir)
  loop.save_config(config, workdir)
  state = loop.train_block(run, 0, [])
  np.savez(f"{out_prefix}.{jax.process_index()}.npz", **final_tree(state))
  print(f"process {jax.process_index()}: done", flush=True)
  jax.distributed.shutdown()  # Both processes leave together, after both are done.


if __name__ == "__main__":
  main(*sys.argv[1:4])
