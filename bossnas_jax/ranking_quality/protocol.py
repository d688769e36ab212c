"""Does the search rank networks well? Ground truth by retraining a sample, against estimators.

The protocol of `benchmarks/ranking_quality.py` (its docstring has the command):

1. **Sample** (`sample`): architectures of the judged search's space whose retrained network lies in
   a moderate MAdds band (the middle quantiles of all architectures), so that cost alone cannot
   explain accuracy; half uniformly at random from the band, half spread evenly over the band's
   range of BossNAS scores.
2. **Ground truth** (`run_jobs`): every (architecture, seed) retrained from scratch with one fixed
   recipe; an architecture's ground truth is the mean top-1 of its `seeds` trainings. Each result
   is stored the moment it finishes, so an interrupted benchmark never retrains a finished one
   (and a retraining killed midway resumes from its own checkpoint). The `ceiling_networks`
   architectures are trained with twice as many seeds: the ground truth measured twice,
   independently, to know its noise (docs/method.md#ranking-evaluation).
3. **Estimators** (`rank_file_estimators`; MAdds, params, NASWOT from `proxies` and random in
   the script),
   each oriented so that higher means "predicted better", and **summary** (`summarize`): per
   estimator Kendall tau-b and Spearman rho against the mean ground truth, a bootstrap interval
   for tau, and the ground truth of the network it ranks best; the same tau within and between
   scale chains, and Kendall's partial tau given the parameter count. The noise ceiling is the tau
   between the two independent measurements of the ceiling networks (the mean of seeds
   0..seeds-1 against the mean of seeds seeds..2*seeds-1): no estimator can be trusted to rank
   better than the ground truth agrees with itself.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from bossnas_jax import search_space as ss
from bossnas_jax.infra import errors
from bossnas_jax.ranking_quality import correlation as corr
from bossnas_jax.rating import rank_files as rt
from bossnas_jax.search import population
from bossnas_jax.search import problem as sp

FORMAT_VERSION = 1
# Bumped whenever proxies.naswot changes what it computes: stored values of another version are
# recomputed on resume.
NASWOT_VERSION = 2
# Settings whose change would mix incomparable results into one table.
# `seeds` may grow on resume: finished trainings stay valid, new seeds are added.
_FIXED_SETTINGS = ("recipe", "metric", "num", "ceiling_networks", "madds_band", "sample_seed",
                   "proxy_images")


class BenchmarkError(errors.UserError, ValueError):
  """Bad benchmark settings, or stored results that belong to another plan."""


# ------------------------------------------------------------------------------------------------
# 1. Sample.


def sample(pop: population.Population, num: int, ceiling_networks: int, seed: int = 0,
           band: tuple[float, float] = (0.3, 0.7), seeds: int = 1) -> list[dict]:
  """`num` distinct architectures within the MAdds quantile `band` of `pop` (whose costs are the
  retrained network's): half uniformly at random, half nearest to evenly spaced score values over
  the band's score range. The first `ceiling_networks` rows (half of each kind) are trained with
  2 * `seeds` seeds, the others with `seeds` (`assign_seeds`)."""
  if num < 4 or not 0 <= ceiling_networks <= num:
    raise BenchmarkError(f"num={num} must be >= 4 and 0 <= ceiling_networks={ceiling_networks} "
                         "<= num.")
  if seeds < 1:
    raise BenchmarkError(f"seeds={seeds}: train every architecture with at least 1 seed.")
  if not 0 <= band[0] < band[1] <= 1:
    raise BenchmarkError(f"MAdds band {band}: two quantiles 0 <= low < high <= 1 expected.")
  lo, hi = np.quantile(pop.madds, band)
  idx = np.flatnonzero((pop.madds >= lo) & (pop.madds <= hi))
  if len(idx) < 2 * num:
    raise BenchmarkError(f"only {len(idx)} architectures in the MAdds band {band}; widen it.")
  rng = np.random.default_rng(seed)
  n_random = num // 2
  random_rows = [int(i) for i in rng.choice(idx, n_random, replace=False)]
  chosen = set(random_rows)
  scores = pop.scores[idx]
  spread_rows = []
  for target in np.linspace(scores.min(), scores.max(), num - n_random):
    for j in np.argsort(np.abs(scores - target), kind="stable"):
      if int(idx[j]) not in chosen:
        chosen.add(int(idx[j]))
        spread_rows.append(int(idx[j]))
        break
  # Ceiling networks are half of each kind: the first random draws, and spread rows evenly over
  # the scores.
  k_r = ceiling_networks // 2
  k_s = ceiling_networks - k_r
  spread_ceiling = set(np.linspace(0, len(spread_rows) - 1, k_s).round().astype(int).tolist()
                       if k_s else [])
  rows = ([(r, "random", i < k_r) for i, r in enumerate(random_rows)]
          + [(r, "score_spread", i in spread_ceiling) for i, r in enumerate(spread_rows)])
  rows.sort(key=lambda t: not t[2])  # Ceiling networks first, so the noise is known early.
  plan = [{"architecture": str(pop.architecture(r)), "group": g, "ceiling": ceiling,
           "madds": int(pop.madds[r]), "params": int(pop.params[r])} for r, g, ceiling in rows]
  return assign_seeds(plan, seeds)


def assign_seeds(plan: Sequence[dict], seeds: int) -> list[dict]:
  """The plan with each row's training seeds: 0..seeds-1, and 0..2*seeds-1 for a ceiling row."""
  return [{**row, "seeds": list(range(2 * seeds if row["ceiling"] else seeds))} for row in plan]


def upgrade_stored(settings: dict, plan: Sequence[dict]) -> tuple[dict, list[dict]]:
  """Settings and plan of a benchmark stored before `seeds` existed (its ceiling networks had
  seeds (0, 1), the others seed 0: the same as `seeds` = 1)."""
  settings = dict(settings)
  if "two_seeds" in settings:
    settings["ceiling_networks"] = settings.pop("two_seeds")
    settings.setdefault("seeds", 1)
    plan = [{**row, "ceiling": row.get("ceiling", len(row["seeds"]) > 1)} for row in plan]
  return settings, list(plan)


def resume_settings(prev: dict, settings: dict) -> dict:
  """The settings to continue a stored benchmark with: an error if a setting that shapes the
  results changed (the recipe, the ground-truth metric, the sample), else the stored ones with
  any search workdir given now filled in. JSON turns tuples into lists, so both sides are compared
  after a JSON round trip."""
  old, new = (json.loads(json.dumps(x)) for x in (prev, settings))
  for k in _FIXED_SETTINGS:
    if old.get(k) != new.get(k):
      raise BenchmarkError(
          f"the stored benchmark was made with another {k} ({_short(old.get(k))} there, "
          f"{_short(new.get(k))} now); rerun with the same flags and config, or pass another "
          "--out for a new benchmark.")
  for k in ("search", "long_search"):
    if old.get(k) and new.get(k) and os.path.normpath(old[k]) != os.path.normpath(new[k]):
      raise BenchmarkError(
          f"--{k} {new[k]} differs from the stored {old[k]}: its scores would be judged against "
          "a sample planned from another search; pass the same workdir, or another --out.")
    old[k] = new.get(k) or old.get(k)
  return {**new, **old, "naswot_version": new.get("naswot_version"),
          "seeds": new.get("seeds", old.get("seeds"))}


def _short(x) -> str:
  text = repr(x)
  return text if len(text) < 60 else text[:57] + "..."


def jobs(plan: Sequence[dict]) -> list[tuple[str, int]]:
  """(architecture, seed) in training order: the ceiling networks first (the noise comes before
  any other figure), then seed by seed, so that every architecture has one ground-truth value
  before any has its second."""
  order = sorted(((not row["ceiling"], s, i) for i, row in enumerate(plan) for s in row["seeds"]))
  return [(plan[i]["architecture"], s) for _, s, i in order]


# ------------------------------------------------------------------------------------------------
# 2. Ground truth.


def job_key(arch: str, seed: int) -> str:
  return f"{arch}_s{seed}"


def run_jobs(plan: Sequence[dict], results: dict[str, dict],
             train: Callable[[str, int], dict], on_result: Callable[[dict[str, dict]], None],
             log: Callable[[str], None] = print) -> dict[str, dict]:
  """Trains every job of `plan` not yet in `results` (keyed by `job_key`), in order; after each,
  adds its result and calls `on_result(results)` (which stores them). `train(arch, seed)` returns
  a dict with at least 'top1'."""
  todo = [j for j in jobs(plan) if job_key(*j) not in results]
  total = len(jobs(plan))
  log(f"ground truth: {total - len(todo)} of {total} trainings done, {len(todo)} to go")
  started = time.perf_counter()
  for k, (arch, seed) in enumerate(todo):
    t0 = time.perf_counter()
    out = dict(train(arch, seed))
    out.update(architecture=arch, seed=seed, seconds=round(time.perf_counter() - t0, 1))
    results[job_key(arch, seed)] = out
    on_result(results)
    per_job = (time.perf_counter() - started) / (k + 1)
    log(f"[{total - len(todo) + k + 1}/{total}] {arch} seed {seed}: top-1 {out['top1']:.2f}% in "
        f"{out['seconds']:.0f} s; about {per_job * (len(todo) - k - 1) / 60:.0f} min left")
  return results


def ground_truth(plan: Sequence[dict], results: Mapping[str, dict]) -> dict[str, dict[int, float]]:
  """{architecture: {seed: top-1}} of the finished jobs."""
  out: dict[str, dict[int, float]] = {}
  for row in plan:
    for s in row["seeds"]:
      r = results.get(job_key(row["architecture"], s))
      if r is not None:
        out.setdefault(row["architecture"], {})[s] = float(r["top1"])
  return out


# ------------------------------------------------------------------------------------------------
# 3. Estimators (higher = predicted better).


def _history_scores(workdir: str, which: str) -> dict[tuple[int, int], rt.Scores]:
  """Scores of every (block, input scale) from ratings/history: the 'first' or 'last' rating."""
  found = rt.history(workdir)
  if not found:
    raise BenchmarkError(f"{rt.ratings_dir(workdir)} holds no rating history; is {workdir} a "
                         f"main job's workdir?")
  pick = min if which == "first" else max
  return {k: rt.read_rank_file(epochs[pick(epochs)]).scores for k, epochs in found.items()}


def _architecture_scores(scores: Mapping[tuple[int, int], rt.Scores],
                         archs: Sequence[str]) -> list[float]:
  out = []
  for a in archs:
    arch = ss.parse_architecture(a)
    try:
      out.append(sp.total_score(scores[(b, arch.input_scale(b))][tuple(p)]
                                for b, p in enumerate(arch.paths)))
    except KeyError:
      out.append(float("nan"))
  return out


def rank_file_estimators(workdir: str, archs: Sequence[str], name: str = "bossnas"
                         ) -> dict[str, list[float]]:
  """BossNAS estimators of one main job: its final rating (the search's score), its first rating,
  and the final rating normalised within each (block, input scale); negated (lower is better)."""
  final = {k: rf.scores for k, rf in rt.read_rank_files(workdir).items()}
  out = {name: final, f"{name}_first_rating": _history_scores(workdir, "first"),
         f"{name}_zscore": sp.normalize_scores(final, "zscore"),
         f"{name}_rank_norm": sp.normalize_scores(final, "rank")}
  return {k: [-v for v in _architecture_scores(s, archs)] for k, s in out.items()}


# ------------------------------------------------------------------------------------------------
# 4. Summary.


def best_pick(values: Sequence[float], truth: Sequence[float]) -> tuple[int, float]:
  """(row, ground truth) of the network an estimator ranks best; among ties, their mean truth."""
  v = np.asarray(values, np.float64)
  top = np.flatnonzero(v == np.nanmax(v))
  return int(top[0]), float(np.mean(np.asarray(truth)[top]))


def scale_chain(arch: str) -> tuple[int, ...]:
  return ss.parse_architecture(arch).scale_chain()


def variance_share(values: Sequence[float], groups: Sequence) -> float:
  """The share of the values' variance that lies between groups (R^2 of the group means);
  NaN with fewer than two values or none of them apart."""
  v = np.asarray(values, np.float64)
  if len(v) < 2:
    return float("nan")
  total = float(np.sum((v - v.mean()) ** 2))
  if total == 0:
    return float("nan")
  inside = 0.0
  for g in set(groups):
    m = np.array([x == g for x in groups])
    inside += float(np.sum((v[m] - v[m].mean()) ** 2))
  return 1 - inside / total


# The fewest pairs of networks (tied or not) a tau within or between scale chains is given for.
MIN_PAIRS = 10


def _grouped_tau(within: bool) -> Callable[..., float]:
  """tau-b over the pairs within (or between) groups coded as numbers in the third column."""
  return lambda x, y, g: corr.kendall_tau_b(x, y, corr.group_pairs(list(g), within))


def correlation(values: Sequence[float], truth: Sequence[float], samples: int = 2000,
                seed: int = 0, chains: Sequence | None = None,
                control: Sequence[float] | None = None) -> dict:
  """tau-b with its bootstrap interval, and Spearman rho, of values against truth. With `chains`
  (one scale chain per row): tau over the pairs of networks of other chains and of one chain, and
  the values' variance share between chains. With `control`: Kendall's partial tau given it, and
  tau between the values and the control."""
  v, t = np.asarray(values, np.float64), np.asarray(truth, np.float64)
  ok = ~np.isnan(v) & np.isfinite(t)  # NaN: no value (not computed, or no rating)
  v, t = v[ok], t[ok]
  # -inf is a real verdict (NASWOT's singular kernel): below every finite value, not dropped.
  is_finite = np.isfinite(v)
  finite = v[is_finite]
  v = np.where(np.isneginf(v), finite.min() - 1 if len(finite) else -1.0, v)
  if len(v) < 3:
    return {"n": int(len(v))}
  lo, hi = corr.bootstrap_interval(v, t, samples=samples, seed=seed)
  out = {"n": int(len(v)), "kendall_tau": json_number(corr.kendall_tau_b(v, t)),
         "spearman_rho": json_number(corr.spearman_rho(v, t)),
         "kendall_tau_95": [json_number(lo), json_number(hi)]}
  if chains is not None:
    g = [c for c, keep in zip(chains, ok) if keep]
    codes = np.array([list(dict.fromkeys(g)).index(c) for c in g], np.float64)
    # Of the finite values only: the share must not depend on the stand-in for -inf above.
    out["variance_share_between_chains"] = json_number(variance_share(
        finite, [c for c, f in zip(g, is_finite) if f]))
    for key, within in (("between_chains", False), ("within_chains", True)):
      pairs = int(corr.group_pairs(g, within)[np.triu_indices(len(g), 1)].sum())
      out[f"pairs_{key}"] = pairs
      if pairs < MIN_PAIRS:  # A tau of a pair or two is a coin, not a figure.
        continue
      tau = _grouped_tau(within)
      lo, hi = corr.bootstrap_interval(v, t, tau, samples, seed=seed, more=[codes])
      out[f"kendall_tau_{key}"] = json_number(tau(v, t, codes))
      out[f"kendall_tau_{key}_95"] = [json_number(lo), json_number(hi)]
  if control is not None:
    z = np.asarray(control, np.float64)[ok]
    has = np.isfinite(z)
    v, t, z = v[has], t[has], z[has]
    out["n_partial"] = int(len(v))
    if len(v) >= 3:
      lo, hi = corr.bootstrap_interval(v, t, corr.partial_kendall_tau, samples, seed=seed,
                                       more=[z])
      out["partial_kendall_tau"] = json_number(corr.partial_kendall_tau(v, t, z))
      out["partial_kendall_tau_95"] = [json_number(lo), json_number(hi)]
      out["kendall_tau_with_control"] = json_number(corr.kendall_tau_b(v, z))
  return out


def json_number(x: float) -> float | None:
  """x, or None where JSON has no number (NaN: undefined, e.g. for a constant estimator)."""
  return float(x) if math.isfinite(x) else None


def ceiling_halves(row: dict, top1: Mapping[int, float]) -> tuple[float, float] | None:
  """A ceiling network's two independent ground-truth measurements (the mean top-1 of the first
  and of the second half of its seeds), once all its seeds are finished."""
  seeds = row["seeds"]
  if not all(s in top1 for s in seeds):
    return None
  half = len(seeds) // 2
  return (float(np.mean([top1[s] for s in seeds[:half]])),
          float(np.mean([top1[s] for s in seeds[half:]])))


def variance_components(gt: Mapping[str, Mapping[int, float]], seeds_per_measurement: int,
                        seeds: Sequence[int] = (0, 1)) -> dict | None:
  """How far apart the networks are against one training's noise: a two-way decomposition
  (network x seed, one training per cell) of the top-1 of every network trained with all `seeds`.

  A seed moves every network alike (its data order and augmentation are shared), which leaves
  their order alone; the network-by-seed residual is the noise of one training. With the networks'
  own variance s_n^2 and the residual's s_e^2, a ground truth averaged over m seeds has the
  reliability r = s_n^2 / (s_n^2 + s_e^2 / m): under a normal model two such measurements agree
  with Kendall tau (2/pi) arcsin r (what the measured noise ceiling estimates), and a perfect
  estimator reaches (2/pi) arcsin sqrt(r) against one of them. None below 3 networks."""
  x = np.array([[v[s] for s in seeds] for v in gt.values() if all(s in v for s in seeds)],
               np.float64)
  if len(seeds) < 2 or x.shape[0] < 3:
    return None
  n, k = x.shape
  grand = x.mean()
  net, seed = x.mean(1) - grand, x.mean(0) - grand
  residual = x - grand - net[:, None] - seed[None, :]
  ms_residual = float((residual ** 2).sum()) / ((n - 1) * (k - 1))
  ms_network = k * float((net ** 2).sum()) / (n - 1)
  var_network = max(ms_network - ms_residual, 0.0) / k  # E[MS_network] = s_e^2 + k s_n^2
  denom = var_network + ms_residual / seeds_per_measurement
  r = var_network / denom if denom > 0 else 0.0
  return {"networks": int(n), "seeds": [int(s) for s in seeds],
          "seed_effects": {str(s): float(e) for s, e in zip(seeds, seed)},
          "noise_sd": math.sqrt(ms_residual), "network_sd": math.sqrt(var_network),
          "seeds_per_measurement": int(seeds_per_measurement), "reliability": r,
          "predicted_ceiling_tau": 2 / math.pi * math.asin(r),
          "predicted_best_estimator_tau": 2 / math.pi * math.asin(math.sqrt(r))}


def summarize(plan: Sequence[dict], results: Mapping[str, dict],
              estimators: Mapping[str, Sequence[float]], samples: int = 2000,
              control: str | None = "params") -> dict:
  """Noise ceiling and per-estimator correlations over the architectures with ground truth.

  Beside each tau: the same tau over the pairs of networks of different scale chains and of one
  chain (`Architecture.scale_chain`; the chain fixes which rank files, and so which frozen
  prefixes, a BossNAS score is summed from), and Kendall's partial tau given the `control`
  estimator (what an estimator says beyond the cheapest baseline)."""
  gt = ground_truth(plan, results)
  archs = [row["architecture"] for row in plan]
  done = [i for i, a in enumerate(archs) if a in gt]
  truth = [float(np.mean(list(gt[archs[i]].values()))) for i in done]
  chains = [scale_chain(archs[i]) for i in done]
  out: dict = {"architectures_with_ground_truth": len(done),
               "trainings": sum(map(len, gt.values())),
               "ground_truth_top1": {"mean": float(np.mean(truth)) if truth else None,
                                     "min": min(truth, default=None),
                                     "max": max(truth, default=None)}}
  if len(done) >= 3:
    within = corr.group_pairs(chains, True)[np.triu_indices(len(done), 1)]
    out["scale_chains"] = {"chains": len(set(chains)), "pairs_within": int(within.sum()),
                           "pairs_between": int((~within).sum()),
                           "ground_truth_variance_share": json_number(
                               variance_share(truth, chains))}
  halves = [(row["architecture"], ceiling_halves(row, gt.get(row["architecture"], {})))
            for row in plan if row["ceiling"]]
  halves = [(arch, h) for arch, h in halves if h is not None]
  if len(halves) >= 3:
    a, b = np.array([h for _, h in halves]).T
    out["noise_ceiling"] = {**correlation(a, b, samples,
                                          chains=[scale_chain(x) for x, _ in halves]),
                            "seeds_per_measurement": next(len(r["seeds"]) // 2 for r in plan
                                                          if r["ceiling"]),
                            "mean_abs_seed_difference": float(np.mean(np.abs(a - b)))}
  # The ceiling of a ground truth of one seed: seed 0 against seed 1, wherever both exist.
  pairs = [(arch, v[0], v[1]) for arch, v in gt.items() if 0 in v and 1 in v]
  if len(pairs) >= 3 and out.get("noise_ceiling", {}).get("seeds_per_measurement") != 1:
    a, b = np.array([p[1:] for p in pairs]).T
    out["single_seed_ceiling"] = {**correlation(a, b, samples,
                                                chains=[scale_chain(p[0]) for p in pairs]),
                                  "mean_abs_seed_difference": float(np.mean(np.abs(a - b)))}
  per_measurement = max((len(r["seeds"]) for r in plan if not r["ceiling"]), default=1)
  # Seeds 0-1 of every network, or every seed of the ceiling networks: whichever holds more
  # trainings (more networks on a tie).
  seed_sets = {(0, 1)} | {tuple(r["seeds"]) for r in plan if r["ceiling"]}
  found = [v for v in (variance_components(gt, per_measurement, seeds) for seeds in seed_sets)
           if v is not None]
  components = max(found, key=lambda v: (v["networks"] * len(v["seeds"]), v["networks"]),
                   default=None)
  if components is not None:
    out["variance_components"] = components
  z = [estimators[control][i] for i in done] if control in estimators else None
  table = {}
  for name, values in estimators.items():
    v = [values[i] for i in done]
    row = correlation(v, truth, samples, chains=chains,
                      control=z if name != control else None)
    if row["n"] >= 3:
      finite = [x if math.isfinite(x) else -math.inf for x in v]
      i, acc = best_pick(finite, truth)
      row.update(best_pick_architecture=archs[done[i]], best_pick_top1=acc)
    table[name] = row
  out["estimators"] = table
  if z is not None:
    out["partial_control"] = control
  return out
