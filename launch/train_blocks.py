r"""BossNAS main job: block-wise training, rating, search and export.

  python launch/train_blocks.py --config configs/hytra.py:demo --workdir runs/demo
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bossnas_jax import main_job  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (a get_config file).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, ratings and exports go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  main_job.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
