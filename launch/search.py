r"""Re-run the architecture search on a main job's saved ratings, e.g. with another budget.

  python launch/search.py --workdir runs/demo
  python launch/search.py --workdir runs/demo --max_madds 2.5e9 --max_params 30e6 \
      --strategy exhaustive --resolution 224

Settings come from the run's config.json (its `search` section and `seed`) where it has one, then
from these flags. Writes architecture.json, retrain_config.py and two plots into --out, by default
WORKDIR/search/<strategy, budget, resolution...>/ (the main job's own choice in WORKDIR stays as it
is), and prints the chosen network, its cost and the files.
"""

from __future__ import annotations

import argparse
import os
import sys

from bossnas_jax import export, files, search
from bossnas_jax.infra import errors


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="Workdir of a main job (holds ratings/).")
  p.add_argument("--strategy", choices=search.STRATEGIES, default=None,
                 help="exhaustive (exact; the default), evolution (the paper's) or greedy (the "
                 "official rule; no budget).")
  p.add_argument("--max_madds", type=float, default=None, help="MAdds budget, e.g. 2.5e9.")
  p.add_argument("--max_params", type=float, default=None, help="Parameter budget, e.g. 30e6.")
  p.add_argument("--resolution", type=int, default=None, help="BossNet input side (224).")
  p.add_argument("--convention", choices=("true", "official"), default=None,
                 help="Cost convention of the budgets (true).")
  p.add_argument("--normalize", choices=search.NORMALIZATIONS, default=None,
                 help="Block scores as rated (none) or normalised per rank file (zscore, rank).")
  p.add_argument("--seed", type=int, default=None, help="Seed of the evolution.")
  p.add_argument("--out", default=None, help="Where to write the export (default: "
                 "WORKDIR/search/TAG, TAG naming the strategy, budget and resolution).")
  return p.parse_args(argv)


def saved_config(workdir: str) -> dict | None:
  """The run's config.json (written by the main job), if there is one."""
  path = os.path.join(workdir, "config.json")
  return files.read_json(path) if files.exists(path) else None


def main(argv=None) -> export.ExportResult:
  args = parse_args(argv)
  flags = {k: getattr(args, k) for k in ("strategy", "max_madds", "max_params", "resolution",
                                         "convention", "normalize", "seed")}
  try:
    settings = search.settings_from(saved_config(args.workdir), **flags)
    out = args.out or os.path.join(args.workdir, export.SEARCHES, export.search_tag(settings))
    return export.search_and_export(args.workdir, settings, out_dir=out)
  except errors.UserError as e:  # Our errors say what is wrong and how to fix it: no traceback.
    sys.exit(f"launch/search.py: error: {e}")


if __name__ == "__main__":
  main()
