r"""Rate any architectures from the rank files of a (finished or partly finished) main job.

  python launch/rate.py --workdir runs/demo 4444-3323-2222-3332 5433-3230-0010-0000
  python launch/rate.py --workdir runs/demo --archs runs/demo/architecture.json --json rated.json

For each architecture: its block scores, its total score (lower is better, the search's sum), its
exact rank and percentile among every rated architecture of the space, and the MAdds and
parameters of its full-width BossNet at the search resolution in both conventions. An
architecture that cannot be rated (malformed, or a block not rated at its input scale) gets one
error line naming the block and scale or the position; the others are still rated, and the exit
status is 1.
"""

from __future__ import annotations

import argparse
import sys

from bossnas_jax import files, ranking
from bossnas_jax.infra import errors


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="Workdir of a main job (holds ratings/).")
  p.add_argument("archs", nargs="*", help="Architecture strings such as 5433-3230-0010-0000.")
  p.add_argument("--archs", dest="archs_file", default=None,
                 help="A file with one architecture per line, or an architecture.json.")
  p.add_argument("--resolution", type=int, default=None,
                 help="Input side the costs refer to (default: the run's search.resolution).")
  p.add_argument("--normalize", choices=("none", "zscore", "rank"), default=None,
                 help="Block scores as the search sums them (default: the run's search.normalize).")
  p.add_argument("--json", default=None, help="Also write the ratings to this JSON file.")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  archs = list(args.archs)
  try:
    if args.archs_file:
      archs += ranking.read_architecture_list(args.archs_file)
    if not archs:
      raise ranking.RateError("no architecture given: pass strings, or --archs FILE.")
    run, results = ranking.rate(args.workdir, archs, args.resolution, args.normalize)
  except errors.UserError as e:
    print(f"launch/rate.py: error: {e}", file=sys.stderr)
    return 2
  print(ranking.format_table(run, results))
  if args.json:
    files.write_json(args.json, {
        "workdir": args.workdir, "resolution": run.resolution, "normalize": run.normalize,
        "num_architectures": len(run.population) if run.population is not None else None,
        "ratings": [r.to_dict() if isinstance(r, ranking.Rating) else
                    {"architecture": a if isinstance(a, str) else str(a), "error": str(r)}
                    for a, r in zip(archs, results)]}, indent=1)
    print(f"wrote {args.json}")
  return 1 if any(isinstance(r, ranking.RateError) for r in results) else 0


if __name__ == "__main__":
  sys.exit(main())
