r"""Re-run the architecture search on a main job's saved ratings, e.g. with another budget.

  python launch/search.py --workdir runs/demo
  python launch/search.py --workdir runs/demo --max_madds 2.5e9 --max_params 30e6 \
      --strategy exhaustive --resolution 224

Settings come from the run's config.json (its `search` section and `seed`) where it has one, then
from these flags. Writes architecture.json, retrain_config.py and two plots into --out, by default
WORKDIR/search/<strategy, budget, resolution...>/ (the main job's own choice in WORKDIR stays as it
is), and prints the chosen network, its cost and the files (`search.export.research`).
"""

from absl import flags

from bossnas_jax.infra import cli
from bossnas_jax.models import cost
from bossnas_jax.search import export
from bossnas_jax.search import problem as sp

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a main job (holds ratings/).")
_STRATEGY = flags.DEFINE_enum("strategy", None, sp.STRATEGIES,
                              "exhaustive (exact; the default), evolution (the paper's) or greedy "
                              "(the official rule; no budget).")
_MAX_MADDS = flags.DEFINE_float("max_madds", None, "MAdds budget, e.g. 2.5e9.")
_MAX_PARAMS = flags.DEFINE_float("max_params", None, "Parameter budget, e.g. 30e6.")
_RESOLUTION = flags.DEFINE_integer("resolution", None, "BossNet input side (224).")
_CONVENTION = flags.DEFINE_enum("convention", None, cost.CONVENTIONS,
                                "Cost convention of the budgets (true).")
_NORMALIZE = flags.DEFINE_enum("normalize", None, sp.NORMALIZATIONS,
                               "Block scores as rated (none) or normalised per rank file.")
_SEED = flags.DEFINE_integer("seed", None, "Seed of the evolution.")
_LAT_TABLE = flags.DEFINE_string(
    "latency_table", None, "A latency table (launch/latency_table.py): latency becomes a cost.")
_MAX_LAT = flags.DEFINE_float("max_latency_ms", None, "Budget on the predicted latency (ms).")
_LAT_BATCH = flags.DEFINE_integer("latency_batch", None, "Batch the table must be measured at (1).")
_LAT_DTYPE = flags.DEFINE_string("latency_dtype", None, "Its dtype (float32).")
_OUT = flags.DEFINE_string("out", None, "Where to write the export (default: WORKDIR/search/TAG, "
                           "TAG naming the strategy, budget and resolution).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; every input is a --flag (see --help).",
             cli.USAGE_STATUS)
  export.research(_WORKDIR.value, _OUT.value, strategy=_STRATEGY.value,
                  max_madds=_MAX_MADDS.value, max_params=_MAX_PARAMS.value,
                  resolution=_RESOLUTION.value, convention=_CONVENTION.value,
                  normalize=_NORMALIZE.value, seed=_SEED.value,
                  latency_table=_LAT_TABLE.value, max_latency_ms=_MAX_LAT.value,
                  latency_batch=_LAT_BATCH.value, latency_dtype=_LAT_DTYPE.value)


if __name__ == "__main__":
  cli.run(main)
