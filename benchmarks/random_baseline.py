r"""The searched network against random architectures of the same cost, same recipe, same budget.

  python benchmarks/random_baseline.py --config configs/retrain.py:demo \
      --arch runs/demo/architecture.json --workdir runs/random_baseline [--num 5] [--tolerance 0.1]

The protocol of "NAS evaluation is frustratingly hard" (Yang et al., ICLR 2020): sample random valid
architectures of the search space whose retraining network has MAdds within +-tolerance of the
searched network's, retrain each with exactly the searched network's config (recipe, epochs,
seed, data), and report the relative improvement of the searched network over their mean,
RI = 100 * (acc_searched - mean acc_random) / mean acc_random.

Random architectures: each block's path uniform among the valid candidates at the scale where the
previous block ends (search_space's candidate lists, through export.sample_architectures), costed
as the network that is retrained (model.cost of state.network_config at the config's width and
resolution, true convention), rejected until `--num` distinct ones fall within the MAdds band.
Every network retrains in its own sub-folder of --workdir with launch/retrain.py's loop, so an
interrupted benchmark resumes where it stopped. Any `--config.*` override applies to all networks
alike (e.g. --config.train.epochs=3 for a smaller budget). The accuracy compared is the final
top-1 of `--metric` (raw, ema, or the better of the two at the end).
"""

import json
import os

import numpy as np
from absl import flags
from ml_collections import config_flags

from bossnas_jax import search_space as ss
from bossnas_jax.data import classification
from bossnas_jax.infra import cli, compile_cache, parallel
from bossnas_jax.models import cost
from bossnas_jax.retrain import loop
from bossnas_jax.retrain import state as state_lib
from bossnas_jax.search import (
  architecture,
  export,
)
from bossnas_jax.search import problem as sp

_CONFIG = config_flags.DEFINE_config_file("config", None, "Retraining config (get_config file).")
_ARCH = flags.DEFINE_string("arch", None, "The searched network: architecture.json or string.")
_WORKDIR = flags.DEFINE_string("workdir", None, "One sub-folder per retrained network.")
_NUM = flags.DEFINE_integer("num", 5, "Random architectures to retrain.")
_TOL = flags.DEFINE_float("tolerance", 0.1, "Relative MAdds band around the searched network.")
_SEED = flags.DEFINE_integer("sample_seed", 0, "Seed of the architecture sampling.")
_METRIC = flags.DEFINE_enum("metric", "raw", ["raw", "ema", "best"], "Final top-1 compared.")
flags.mark_flags_as_required(["config", "arch", "workdir"])


def _arch_string(arch: str) -> str:
  if arch.endswith(".json") or os.path.isfile(arch):
    return str(architecture.load_architecture(arch)[0])
  return str(ss.parse_architecture(arch))


def network_cost(config, arch: str, num_classes: int) -> cost.Cost:
  c = config.copy_and_resolve_references()
  c.model.arch = arch
  return cost.bossnet_cost(state_lib.network_config(c, num_classes), int(c.model.resolution))


def sample_random(config, searched: str, num_classes: int, num: int, tolerance: float,
                  seed: int) -> list[tuple[str, cost.Cost]]:
  """`num` distinct random valid architectures within +-tolerance of the searched MAdds."""
  target = network_cost(config, searched, num_classes).madds
  # A problem with every candidate of every (block, input scale) and no scores: only its chains
  # (which paths may follow which) are used, for sampling.
  scores = {(b, s): {p: 0.0 for p in ss.candidates(b, s)}
            for b in range(ss.NUM_BLOCKS) for s in ss.input_scales(b)}
  problem = sp.build_problem(scores, int(config.model.resolution))
  found: dict[str, cost.Cost] = {}
  tried: set[str] = {searched}
  for round_ in range(200):
    for e in export.sample_architectures(problem, 500, seed=seed * 1000 + round_):
      a = str(e.architecture)
      if a in tried:
        continue
      tried.add(a)
      c = network_cost(config, a, num_classes)
      if abs(c.madds - target) <= tolerance * target:
        found[a] = c
        if len(found) == num:
          return list(found.items())
  raise SystemExit(f"only {len(found)} of {num} random architectures within +-{tolerance:.0%} "
                   f"of {target / 1e6:.2f}M MAdds after {len(tried)} draws; widen --tolerance.")


def _accuracy(results: dict, metric: str) -> float:
  if metric == "best":
    return max(results["raw"]["top1"], results["ema"]["top1"])
  return results[metric]["top1"]


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}", cli.USAGE_STATUS)
  parallel.maybe_initialize_distributed()
  config, workdir = _CONFIG.value, _WORKDIR.value
  compile_cache.enable(os.path.join(workdir, "jax_cache"))
  num_classes = int(classification.num_classes(config.data))
  searched = _arch_string(_ARCH.value)
  randoms = sample_random(config, searched, num_classes, _NUM.value, _TOL.value, _SEED.value)
  nets = [("searched", searched, network_cost(config, searched, num_classes))]
  nets += [(f"random_{i}", a, c) for i, (a, c) in enumerate(randoms)]
  print(f"searched {searched}: {nets[0][2].madds / 1e6:.3f}M MAdds; {len(randoms)} random "
        f"architectures within +-{_TOL.value:.0%}: " + ", ".join(a for _, a, _ in nets[1:]),
        flush=True)
  rows = []
  for name, arch, c in nets:
    cfg = config.copy_and_resolve_references()
    cfg.model.arch = arch
    print(f"\n=== {name}: {arch} ({c.madds / 1e6:.3f}M MAdds, {c.params / 1e6:.3f}M params)",
          flush=True)
    results = loop.train_and_evaluate(cfg, os.path.join(workdir, name))
    rows.append({"name": name, "architecture": arch, "madds": c.madds, "params": c.params,
                 "raw_top1": results["raw"]["top1"], "ema_top1": results["ema"]["top1"],
                 "raw_ece": results["raw"]["ece"], "top1": _accuracy(results, _METRIC.value)})
  acc_m = rows[0]["top1"]
  acc_r = np.array([r["top1"] for r in rows[1:]])
  ri = 100.0 * (acc_m - acc_r.mean()) / acc_r.mean()
  rank = 1 + int(np.sum(acc_r > acc_m))
  print(f"\n{'network':<10} {'architecture':<21} {'MAdds (M)':>10} {'params (M)':>10} "
        f"{'raw top-1':>9} {'EMA top-1':>9} {'raw ECE':>8}")
  for r in rows:
    print(f"{r['name']:<10} {r['architecture']:<21} {r['madds'] / 1e6:>10.3f} "
          f"{r['params'] / 1e6:>10.3f} {r['raw_top1']:>9.2f} {r['ema_top1']:>9.2f} "
          f"{r['raw_ece']:>8.2f}")
  print(f"\nsearched {acc_m:.2f}% vs random {acc_r.mean():.2f}% +- {acc_r.std(ddof=1):.2f} "
        f"(mean +- std over {len(acc_r)}, {_METRIC.value} top-1): relative improvement "
        f"RI = {ri:+.2f}% (Yang et al. 2020); the searched network ranks {rank} of "
        f"{len(rows)}")
  summary = {"metric": _METRIC.value, "tolerance": _TOL.value, "rows": rows,
             "relative_improvement": ri, "rank": rank,
             "config_epochs": int(config.train.epochs)}
  with open(os.path.join(workdir, "random_baseline.json"), "w") as f:
    json.dump(summary, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
