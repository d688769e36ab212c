r"""Rate any architectures from the rank files of a (finished or partly finished) main job.

  python launch/rate.py --workdir runs/demo 4444-3323-2222-3332 5433-3230-0010-0000
  python launch/rate.py --workdir runs/demo --archs runs/demo/architecture.json --json rated.json
  python launch/rate.py --workdir runs/demo runs/demo/architecture.json 5433-3230-0010-0000

For each architecture: its block scores, its total score (lower is better, the search's sum), its
exact rank and percentile among every rated architecture of the space, and the MAdds and
parameters of its full-width BossNet at the search resolution in both conventions
(`search.population.rate`). An architecture that cannot be rated (malformed, or a block not rated
at its input scale) gets one error line naming the block and scale or the position; the others
are still rated, and the exit status is 1.
"""

from absl import flags

from bossnas_jax.infra import cli, files
from bossnas_jax.search import population
from bossnas_jax.search import problem as sp

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a main job (holds ratings/).")
_ARCHS = flags.DEFINE_string("archs", None,
                             "A file with one architecture per line, or an architecture.json.")
_RESOLUTION = flags.DEFINE_integer(
    "resolution", None, "Input side the costs refer to (default: the run's search.resolution).")
_NORMALIZE = flags.DEFINE_enum(
    "normalize", None, sp.NORMALIZATIONS,
    "Block scores as the search sums them (default: the run's search.normalize).")
_JSON = flags.DEFINE_string("json", None, "Also write the ratings to this JSON file.")
flags.mark_flags_as_required(["workdir"])


def main(argv) -> int:
  archs = []
  for arg in argv[1:]:  # Architecture strings after the flags; a file given so is read as --archs.
    archs += population.read_architecture_list(arg) if files.exists(arg) else [arg]
  if _ARCHS.value:
    archs += population.read_architecture_list(_ARCHS.value)
  if not archs:
    raise population.RateError("no architecture given: pass strings, or --archs FILE.")
  run, results = population.rate(_WORKDIR.value, archs, _RESOLUTION.value, _NORMALIZE.value)
  print(population.format_table(run, results))
  if _JSON.value:
    files.write_json(_JSON.value, population.ratings_record(_WORKDIR.value, run, archs, results),
                     indent=1)
    print(f"wrote {_JSON.value}")
  return 1 if any(isinstance(r, population.RateError) for r in results) else 0


if __name__ == "__main__":
  cli.run(main)
