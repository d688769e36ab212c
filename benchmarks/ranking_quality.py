r"""How well does a search's score order networks by their real accuracy? (resumable; hours)

  python benchmarks/ranking_quality.py --config configs/retrain.py:ground_truth --search runs/demo \
      [--long_search runs/demo_long] [--readme README.md] --workdir runs/ranking_quality \
      [--out benchmarks/results/ranking_quality.json]

Samples `--num` architectures of the judged search's space within a moderate MAdds band (half at
random, half spread over its score range; `bossnas_jax/ranking_quality/protocol.py` has the
protocol),
retrains each from scratch with the retraining config (`configs/retrain.py:ground_truth`: the
whole training split for 6 epochs; evaluated once, at the end, on the whole `test` split) with
`--seeds` seeds, and ranks them by every estimator: the search's final and first ratings, its
scores normalised per (block, input scale), the same for `--long_search`, MAdds, params, NASWOT
at initialisation (Mellor et al. 2021) and random. Ground truth is the mean `--metric` top-1 over
seeds. `--ceiling_networks` of them are trained with twice as many seeds, so that their ground
truth is measured twice, independently: the agreement of the two is the noise ceiling.

Every finished training is written to --out at once (with the plan, the estimators, the summary
and a scatter plot next to it), so the benchmark resumes from --out even on another machine; a
training killed midway resumes from its checkpoint in --workdir. `--summary_only` recomputes the
estimators and the summary without training; `--keep_estimators` keeps the stored BossNAS
estimators (for a rerun next to a `runs/demo` that is not the judged one). The summary also splits
every tau into pairs of networks of different scale chains and of one chain, and gives Kendall's
partial tau given the parameter count.
"""

import os
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

from bossnas_jax.data import classification
from bossnas_jax.infra import cli, compile_cache, files, parallel
from bossnas_jax.ranking_quality import protocol as rq
from bossnas_jax.ranking_quality import proxies, report
from bossnas_jax.rating import rank_files as rt
from bossnas_jax.retrain import loop
from bossnas_jax.retrain import state as state_lib
from bossnas_jax.search import population
from bossnas_jax.search import problem as sp

_CONFIG = config_flags.DEFINE_config_file("config", None, "Retraining config (the recipe).")
_SEARCH = flags.DEFINE_string("search", None, "Workdir of the main job whose scores are judged.")
_LONG = flags.DEFINE_string("long_search", None, "Workdir of a longer main job (optional).")
_WORKDIR = flags.DEFINE_string("workdir", None, "One retraining sub-folder per training.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/ranking_quality.json", "Results JSON.")
_NUM = flags.DEFINE_integer("num", 32, "Architectures to retrain.")
_SEEDS = flags.DEFINE_integer("seeds", 2, "Trainings (seeds) averaged into one ground truth.")
_CEILING = flags.DEFINE_integer("ceiling_networks", 10,
                                "Of them, trained with 2 * --seeds seeds (the noise ceiling).")
_BAND = flags.DEFINE_list("madds_band", ["0.3", "0.7"], "MAdds quantile band of the sample.")
_SEED = flags.DEFINE_integer("sample_seed", 0, "Seed of the sampling.")
_METRIC = flags.DEFINE_enum("metric", "ema", ["raw", "ema"], "Final top-1 used as ground truth.")
_EVAL_SPLIT = flags.DEFINE_string("eval_split", "test", "Split of the ground truth top-1.")
_PROXY_IMAGES = flags.DEFINE_integer("proxy_images", 128, "Training images for NASWOT.")
_README = flags.DEFINE_string("readme", None, "Also rewrite the ranking table of this README.")
_SUMMARY_ONLY = flags.DEFINE_bool("summary_only", False, "Recompute the summary, train nothing.")
_KEEP = flags.DEFINE_bool(
    "keep_estimators", False,
    "Keep the stored BossNAS estimators even where the search workdirs exist here (a rerun of the "
    "demo on another machine has slightly different rank files: it is not the judged search).")
flags.mark_flags_as_required(["config", "workdir"])


def recipe(config):
  """The fixed ground-truth recipe: the config, evaluated once at the end on --eval_split."""
  c = config.copy_and_resolve_references()
  c.data.eval_split = _EVAL_SPLIT.value
  c.eval.every_epochs = int(c.train.epochs)
  return c


def retrained_population(config, search: str, num_classes: int) -> population.Population:
  """Every architecture of the search's space, costed as the network that is retrained."""
  scores = rt.read_ratings(search)
  m = config.model
  problem = sp.build_problem(scores, int(m.resolution), "true", workdir=search,
                             num_classes=num_classes, width_multiplier=float(m.width_multiplier),
                             dim_head=int(m.dim_head))
  return population.enumerate_architectures(problem)


def train_fn(config, workdir: str):
  def train(arch: str, seed: int) -> dict:
    c = config.copy_and_resolve_references()
    c.model.arch, c.seed = arch, seed
    print(f"\n=== {arch} seed {seed}", flush=True)
    r = loop.train_and_evaluate(c, os.path.join(workdir, "gt", rq.job_key(arch, seed)))
    return {"top1": r[_METRIC.value]["top1"], "raw_top1": r["raw"]["top1"],
            "ema_top1": r["ema"]["top1"], "raw_ece": r["raw"]["ece"]}
  return train


def naswot_values(config, plan, cache: dict, num_classes: int) -> dict:
  """NASWOT of every planned architecture at initialisation (seed 0), cached by architecture."""
  missing = [r["architecture"] for r in plan if r["architecture"] not in cache]
  if not missing:
    return cache
  split = f"{config.data.train_split.split('[')[0]}[:{_PROXY_IMAGES.value}]"
  batch = next(classification.eval_iterator(config.data, split=split,
                                            resolution=int(config.model.resolution),
                                            global_batch_size=_PROXY_IMAGES.value))
  if not np.all(batch["valid"]):  # Padding images are equal: every kernel would be singular.
    raise rq.BenchmarkError(f"{config.data.name}:{split} has fewer than --proxy_images="
                            f"{_PROXY_IMAGES.value} images; lower --proxy_images.")
  images = np.asarray(batch["image"])
  for k, arch in enumerate(missing):
    c = config.copy_and_resolve_references()
    c.model.arch = arch
    t0 = time.perf_counter()
    cache[arch] = proxies.naswot_score(state_lib.network_config(c, num_classes), images)
    print(f"NASWOT {k + 1}/{len(missing)} {arch}: {cache[arch]:.2f} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
  return cache


def estimators(plan, settings: dict, stored: dict, naswot: dict) -> dict[str, list[float]]:
  archs = [r["architecture"] for r in plan]
  out: dict[str, list[float]] = {}
  for name in ("bossnas", "bossnas_long"):
    workdir = settings.get("search" if name == "bossnas" else "long_search")
    names = (name, f"{name}_first_rating", f"{name}_zscore", f"{name}_rank_norm")
    here = bool(workdir) and files.isdir(workdir)
    has_stored = any(k in stored for k in names)
    if here and not (_KEEP.value and has_stored):
      out.update(rq.rank_file_estimators(workdir, archs, name))
    elif has_stored:  # Judged earlier, on another machine.
      why = "--keep_estimators" if here else "not here"
      print(f"{workdir or name}: {why}; keeping the stored {name} estimators")
      out.update({k: stored[k] for k in names if k in stored})
  out["madds"] = [float(r["madds"]) for r in plan]
  out["params"] = [float(r["params"]) for r in plan]
  out["naswot"] = [float(naswot.get(a, float("nan"))) for a in archs]
  out["random"] = np.random.default_rng(12345).random(len(archs)).tolist()
  return out


def _number(x) -> float:
  return float("nan") if x is None else float(x)


def write(out_path, settings, plan, results, naswot, wall, stored) -> dict:
  est = estimators(plan, settings, stored, naswot)
  summary = rq.summarize(plan, results, est)
  gt = rq.ground_truth(plan, results)
  rows = []
  for i, r in enumerate(plan):
    a = r["architecture"]
    top1 = {str(s): v for s, v in gt.get(a, {}).items()}
    mean = float(np.mean(list(top1.values()))) if top1 else None
    rows.append({**r, "top1": top1, "top1_mean": mean,
                 "estimators": {k: rq.json_number(v[i]) for k, v in est.items()}})
  record = {"format": rq.FORMAT_VERSION, "settings": settings, "architectures": rows,
            "jobs": results, "summary": summary, "wall_time_s": round(wall, 1)}
  files.write_json(out_path, record, indent=1)
  if _README.value and not report.update_readme(_README.value, summary):
    print(f"--readme {_README.value} has no ranking table block {report.README_MARKERS}; "
          "not updated")
  report.plot(out_path.removesuffix(".json") + ".png", plan, results, est, summary)
  return summary


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}", cli.USAGE_STATUS)
  parallel.maybe_initialize_distributed()
  workdir, out_path = _WORKDIR.value, _OUT.value
  for flag in (_SEARCH, _LONG):
    if flag.value and not files.isdir(flag.value):
      raise rq.BenchmarkError(f"--{flag.name} {flag.value} does not exist; pass the workdir of a "
                              "finished main job (launch/train_blocks.py).")
  files.makedirs(workdir)
  compile_cache.enable(os.path.join(workdir, "jax_cache"))
  config = recipe(_CONFIG.value)
  num_classes = int(classification.num_classes(config.data))
  settings = {"num": _NUM.value, "seeds": _SEEDS.value, "ceiling_networks": _CEILING.value,
              "madds_band": [float(x) for x in _BAND.value], "sample_seed": _SEED.value,
              "metric": _METRIC.value,
              "proxy_images": _PROXY_IMAGES.value, "naswot_version": rq.NASWOT_VERSION,
              "search": _SEARCH.value, "long_search": _LONG.value, "recipe": config.to_dict()}
  prev = files.read_json(out_path) if files.exists(out_path) else None
  stored, naswot = {}, {}
  if prev is not None:  # Resume: the stored plan and every finished training.
    stored_settings, plan = rq.upgrade_stored(
        prev["settings"], [{k: r[k] for k in ("architecture", "group", "ceiling", "seeds",
                                              "madds", "params") if k in r}
                           for r in prev["architectures"]])
    settings = rq.resume_settings(stored_settings, settings)
    plan = rq.assign_seeds(plan, settings["seeds"])
    results, wall = dict(prev["jobs"]), float(prev.get("wall_time_s", 0.0))
    stored = {k: [_number(row["estimators"].get(k)) for row in prev["architectures"]]
              for k in prev["architectures"][0]["estimators"]}
    if prev["settings"].get("naswot_version") == rq.NASWOT_VERSION:
      naswot = {a: v for a, v in zip([r["architecture"] for r in plan], stored.get("naswot", []))
                if not np.isnan(v)}
    print(f"resuming {out_path}: {len(plan)} architectures, {len(results)} trainings done")
  else:
    if not _SEARCH.value:
      raise rq.BenchmarkError("--search (the judged main job's workdir) is needed to plan.")
    pop = retrained_population(config, _SEARCH.value, num_classes)
    plan = rq.sample(pop, _NUM.value, _CEILING.value, _SEED.value,
                     tuple(float(x) for x in _BAND.value), seeds=_SEEDS.value)
    results, wall = {}, 0.0
    print(f"planned {len(plan)} architectures ({len(rq.jobs(plan))} trainings) of "
          f"{len(pop):,}, MAdds {min(r['madds'] for r in plan) / 1e6:.2f}-"
          f"{max(r['madds'] for r in plan) / 1e6:.2f}M")
  start = time.perf_counter()

  def wall_time() -> float:
    # The benchmark's time (trainings and proxies): recomputing the summary of finished work
    # (--summary_only with every proxy value stored) adds none.
    if _SUMMARY_ONLY.value and all(r["architecture"] in naswot for r in plan):
      return wall
    return wall + time.perf_counter() - start

  def save(res):
    return write(out_path, settings, plan, res, naswot, wall_time(), stored)

  summary = save(results)
  if not _SUMMARY_ONLY.value:
    rq.run_jobs(plan, results, train_fn(config, workdir), save)
  # The proxy last (about 30 s per network here, mostly compilation): ground truth comes first.
  naswot = naswot_values(config, plan, naswot, num_classes)
  summary = save(results)
  print("\n" + report.format_summary(summary) + "\n\n" + report.markdown_table(summary))
  print(f"\nwrote {out_path} and its .png; benchmark wall time so far "
        f"{wall_time() / 60:.1f} min")


if __name__ == "__main__":
  cli.run(main)
