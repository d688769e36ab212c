"""One process of the 2-process test in test_multihost.py: trains block 0 of the tiny config.

    python tests/multihost_worker.py DATA_DIR WORKDIR OUT_JSON   (JAX_* variables set by the test)
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

from train_utils import flat, tiny_config  # noqa: E402

from bossnas_jax import parallel, utils  # noqa: E402
from bossnas_jax.train import loop  # noqa: E402


def main(data_dir, workdir, out):
  parallel.maybe_initialize_distributed()
  utils.enable_compilation_cache(os.environ["BOSSNAS_TEST_CACHE"])
  assert jax.process_count() == 2 and jax.device_count() == 8, (jax.process_count(),
                                                                jax.device_count())
  config = tiny_config(data_dir, epochs_per_block=1, accumulate_steps=4)
  run = loop.Run.create(config, workdir)
  loop.save_config(config, workdir)
  state = loop.train_block(run, 0, [])
  tree = flat({"online": state.online, "target": state.target})
  if jax.process_index() == 0:
    with open(out, "w") as f:
      json.dump({k: v.tolist() for k, v in tree.items()}, f)


if __name__ == "__main__":
  main(*sys.argv[1:4])
