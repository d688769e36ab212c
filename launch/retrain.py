r"""Supervised retraining of a BossNet (docs/method.md#retraining-recipe), evaluated every epoch;
resumable.

  python launch/retrain.py --config configs/retrain.py:demo --workdir runs/demo_retrain \
      --arch runs/demo/architecture.json
  python launch/retrain.py --config runs/demo/retrain_config.py:demo --workdir runs/demo_retrain
  python launch/retrain.py --config configs/retrain.py --workdir gs://BUCKET/t0 --arch bossnet_t0 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
Rerun the same command to resume. --arch: bossnet_t0, bossnet_t0_nose, bossnet_t1, an architecture
string ('5433-3230-0010-0000') or an architecture.json; it overrides config.model.arch.
"""

import os

from absl import flags
from ml_collections import config_flags

from bossnas_jax.infra import cli, compile_cache, files, parallel
from bossnas_jax.retrain import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (a get_config file).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics, results and exports.")
_ARCH = flags.DEFINE_string("arch", None, "Network: a named model, an architecture string or an "
                            "architecture.json (overrides config.model.arch).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; every input is a --flag (see --help).",
             cli.USAGE_STATUS)
  parallel.maybe_initialize_distributed()
  config = _CONFIG.value
  if _ARCH.value is not None:  # (An empty --arch= is an error below, not "the config's".)
    config.model.arch = _ARCH.value
  compile_cache.enable(os.path.join(files.check_workdir(_WORKDIR.value), "jax_cache"))
  loop.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
