r"""BossNAS main job: block-wise training, rating, search and export.

  python launch/train_blocks.py --config configs/hytra.py:demo --workdir runs/demo
"""

from absl import flags
from ml_collections import config_flags

from bossnas_jax import main_job
from bossnas_jax.infra import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (a get_config file).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, ratings and exports go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; every input is a --flag (see --help).",
             cli.USAGE_STATUS)
  main_job.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
