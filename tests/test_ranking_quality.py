"""The ranking benchmark's sampling, resume, estimators and summary (no real retraining here), and
the NASWOT proxy on a tiny BossNet."""

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from test_ranking import _write_run

from bossnas_jax import search_space as ss
from bossnas_jax.models import bossnet
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.ranking_quality import correlation as corr
from bossnas_jax.ranking_quality import noise, proxies, report
from bossnas_jax.ranking_quality import protocol as rq
from bossnas_jax.rating import rank_files as rt
from bossnas_jax.search import population as population_lib
from bossnas_jax.search import problem as sp


@pytest.fixture(scope="module")
def population(tmp_path_factory):
  d = tmp_path_factory.mktemp("run")
  _write_run(d, seed=5)
  problem = sp.build_problem(rt.read_ratings(str(d)), 32, num_classes=10,
                             width_multiplier=1 / 16, dim_head=8)
  return population_lib.enumerate_architectures(problem)


def test_sample_is_distinct_in_band_half_spread_and_ceiling_networks_first(population):
  plan = rq.sample(population, 12, 4, seed=0, band=(0.3, 0.7))
  assert plan == rq.sample(population, 12, 4, seed=0, band=(0.3, 0.7))
  assert plan != rq.sample(population, 12, 4, seed=1, band=(0.3, 0.7))
  archs = [r["architecture"] for r in plan]
  assert len(set(archs)) == 12
  lo, hi = np.quantile(population.madds, (0.3, 0.7))
  assert all(lo <= r["madds"] <= hi for r in plan)
  assert [r["group"] for r in plan].count("random") == 6
  assert [len(r["seeds"]) for r in plan] == [2] * 4 + [1] * 8
  assert [r["ceiling"] for r in plan] == [True] * 4 + [False] * 8
  two = rq.sample(population, 12, 4, seed=0, band=(0.3, 0.7), seeds=2)
  assert [r["seeds"] for r in two] == [[0, 1, 2, 3]] * 4 + [[0, 1]] * 8
  assert rq.assign_seeds(plan, 2) == two
  assert {r["group"] for r in plan[:4]} == {"random", "score_spread"}
  # The spread half covers the band's score range, from (nearly) its best to its worst.
  index = {str(population.architecture(i)): i for i in range(len(population))
           if lo <= population.madds[i] <= hi}
  band_scores = population.scores[list(index.values())]
  spread = sorted(population.scores[index[r["architecture"]]] for r in plan
                  if r["group"] == "score_spread")
  width = band_scores.max() - band_scores.min()
  assert spread[0] - band_scores.min() < 0.05 * width
  assert band_scores.max() - spread[-1] < 0.05 * width
  # Ceiling networks first, seed by seed; then seed 0 of every other network before any seed 1.
  order = rq.jobs(two)
  assert order[:4] == [(a, 0) for a in archs[:4]] and order[12:16] == [(a, 3) for a in archs[:4]]
  assert order[16:24] == [(a, 0) for a in archs[4:]] and order[24:] == [(a, 1) for a in archs[4:]]
  assert sorted(order) == sorted((r["architecture"], s) for r in two for s in r["seeds"])
  with pytest.raises(rq.BenchmarkError, match="ceiling_networks"):
    rq.sample(population, 8, 9)
  with pytest.raises(rq.BenchmarkError, match="seeds=0"):
    rq.sample(population, 8, 2, seeds=0)


def _fake_train(log):
  """Deterministic stand-in for a retraining (top-1 from the architecture's digits and the
  seed); records every call so a test sees what was trained."""
  def train(arch, seed):
    log.append((arch, seed))
    return {"top1": 50 + sum(map(int, arch.replace("-", ""))) / 10 + 0.3 * seed}
  return train


class _Killed(Exception):
  pass


def test_an_interrupted_benchmark_never_retrains_a_finished_architecture(population, tmp_path):
  plan = rq.sample(population, 8, 3, seed=2)
  store = tmp_path / "results.json"

  def save(results):
    store.write_text(json.dumps(results))

  calls: list = []
  train = _fake_train(calls)

  def dies_after_4(arch, seed):
    if len(calls) == 4:
      raise _Killed
    return train(arch, seed)

  with pytest.raises(_Killed):
    rq.run_jobs(plan, {}, dies_after_4, save, log=lambda _: None)
  assert len(json.loads(store.read_text())) == 4
  resumed = rq.run_jobs(plan, json.loads(store.read_text()), train, save, log=lambda _: None)
  assert len(calls) == len(rq.jobs(plan)) == 11 and len(set(calls)) == 11  # none twice
  fresh_calls: list = []
  fresh = rq.run_jobs(plan, {}, _fake_train(fresh_calls), lambda r: None, log=lambda _: None)
  strip = lambda r: {k: {f: v for f, v in row.items() if f != "seconds"} for k, row in r.items()}  # noqa: E731
  assert strip(resumed) == strip(fresh) == strip(json.loads(store.read_text()))
  gt = rq.ground_truth(plan, resumed)
  assert sum(len(v) for v in gt.values()) == 11 and all(len(gt[r["architecture"]]) ==
                                                         len(r["seeds"]) for r in plan)


def test_summary_ceiling_correlations_and_best_pick(population):
  plan = rq.sample(population, 10, 4, seed=3)
  results = rq.run_jobs(plan, {}, _fake_train([]), lambda r: None, log=lambda _: None)
  truth = [np.mean(list(rq.ground_truth(plan, results)[r["architecture"]].values()))
           for r in plan]
  est = {"oracle": list(truth), "reversed": [-t for t in truth],
         "constant": [1.0] * len(plan), "half": [truth[i] if i < 5 else np.nan
                                                 for i in range(len(plan))]}
  s = rq.summarize(plan, results, est, samples=200)
  assert s["architectures_with_ground_truth"] == 10 and s["trainings"] == 14
  assert s["noise_ceiling"]["kendall_tau"] == pytest.approx(1.0)  # seed 1 = seed 0 + 0.3
  assert s["noise_ceiling"]["mean_abs_seed_difference"] == pytest.approx(0.3)
  o = s["estimators"]["oracle"]
  assert o["kendall_tau"] == pytest.approx(1.0) and o["spearman_rho"] == pytest.approx(1.0)
  assert o["best_pick_top1"] == pytest.approx(max(truth))
  assert s["estimators"]["reversed"]["kendall_tau"] == pytest.approx(-1.0)
  assert s["estimators"]["reversed"]["best_pick_top1"] == pytest.approx(min(truth))
  assert s["estimators"]["constant"]["best_pick_top1"] == pytest.approx(np.mean(truth))
  assert s["estimators"]["constant"]["kendall_tau"] is None
  assert s["estimators"]["half"]["n"] == 5
  assert "oracle" in report.format_summary(s) and "ceiling: seed 0 against seed 1" in \
      report.format_summary(s)
  assert "single_seed_ceiling" not in s  # With one seed per measurement it is the ceiling.


def test_summary_splits_tau_by_scale_chain_and_partials_out_params(population):
  plan = rq.sample(population, 16, 4, seed=2, band=(0.0, 1.0))
  results = rq.run_jobs(plan, {}, _fake_train([]), lambda r: None, log=lambda _: None)
  gt = rq.ground_truth(plan, results)
  truth = [float(np.mean(list(gt[r["architecture"]].values()))) for r in plan]
  chains = [ss.parse_architecture(r["architecture"]).scale_chain() for r in plan]
  assert len(set(chains)) > 1
  level = {c: np.mean([t for t, d in zip(truth, chains) if d == c]) for c in chains}
  est = {"oracle": truth, "chain_level": [level[c] for c in chains],
         "params": [float(r["params"]) for r in plan]}
  s = rq.summarize(plan, results, est, samples=100)
  c = s["scale_chains"]
  assert c["chains"] == len(set(chains))
  assert c["pairs_within"] + c["pairs_between"] == 16 * 15 // 2
  o, lv = s["estimators"]["oracle"], s["estimators"]["chain_level"]
  assert o["kendall_tau_between_chains"] == pytest.approx(1.0)
  assert o["variance_share_between_chains"] == pytest.approx(c["ground_truth_variance_share"])
  # A score that only knows the chain: every pair inside a chain is a tie, its variance is all
  # between chains.
  assert lv["variance_share_between_chains"] == pytest.approx(1.0)
  assert o["pairs_within_chains"] == c["pairs_within"]
  if c["pairs_within"] >= rq.MIN_PAIRS:
    assert o["kendall_tau_within_chains"] == pytest.approx(1.0)
    assert lv["kendall_tau_within_chains"] is None
  else:  # Too few pairs for a figure: none is given, and the table says why.
    assert "kendall_tau_within_chains" not in o
    assert f"– ({c['pairs_within']} pair" in report.markdown_table(s)
  want = corr.partial_kendall_tau(truth, truth, est["params"])
  assert o["partial_kendall_tau"] == (None if math.isnan(want) else pytest.approx(want))
  want = corr.partial_kendall_tau(est["chain_level"], truth, est["params"])
  assert lv["partial_kendall_tau"] == (None if math.isnan(want) else pytest.approx(want))
  assert o["kendall_tau_with_control"] == pytest.approx(corr.kendall_tau_b(truth, est["params"]))
  assert "partial_kendall_tau" not in s["estimators"]["params"]
  assert s["partial_control"] == "params"
  text, table = report.format_summary(s), report.markdown_table(s)
  assert "within a chain" in text and "partial τ given params" in table
  assert f"{c['chains']} scale chains" in table


def test_correlation_by_chain_needs_enough_pairs_and_partial_skips_missing_controls():
  truth = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
  est = [2.0, 1.0, 4.0, 3.0, 6.0, 5.0, 8.0, -math.inf]  # -inf: ranked last, kept
  two = ["a"] * 4 + ["b"] * 4  # 12 pairs within, 16 between
  r = rq.correlation(est, truth, 200, chains=two, control=[1, 1, 2, 2, 3, 3, 4, np.nan])
  assert r["n"] == 8 and r["pairs_within_chains"] == 12 and r["pairs_between_chains"] == 16
  within = corr.group_pairs(two, True)
  stand_in = [2.0, 1.0, 4.0, 3.0, 6.0, 5.0, 8.0, 0.0]
  assert r["kendall_tau_within_chains"] == pytest.approx(
      corr.kendall_tau_b(stand_in, truth, within))
  # The share is of the finite values (the -inf row's stand-in must not shift it).
  assert r["variance_share_between_chains"] == pytest.approx(
      rq.variance_share(est[:7], two[:7]))
  # The control is missing for the last row: the partial tau is over the other 7.
  assert r["n_partial"] == 7
  assert r["partial_kendall_tau"] == pytest.approx(
      corr.partial_kendall_tau(est[:7], truth[:7], [1, 1, 2, 2, 3, 3, 4]))
  lo, hi = r["partial_kendall_tau_95"]
  assert lo <= r["partial_kendall_tau"] <= hi
  # Eight chains of one network each: no pair within, so no within-chain figure at all.
  r = rq.correlation(est, truth, 200, chains=list("abcdefgh"))
  assert r["pairs_within_chains"] == 0 and "kendall_tau_within_chains" not in r
  assert r["kendall_tau_between_chains"] == pytest.approx(r["kendall_tau"])
  # Hand-computed share: chain means 1 and 11 of [0, 2, 10, 12]: 100 of 104 between.
  assert rq.variance_share([0, 2, 10, 12], [0, 0, 1, 1]) == pytest.approx(100 / 104)


def test_ceiling_compares_two_independent_ground_truths(population):
  plan = rq.sample(population, 8, 4, seed=3, seeds=2)

  def train(arch, seed):  # seeds 2 and 3 reverse the order of seeds 0 and 1
    base = sum(map(int, arch.replace("-", ""))) / 10
    return {"top1": 50 + (base if seed < 2 else -base) + 0.1 * seed}

  results = rq.run_jobs(plan, {}, train, lambda r: None, log=lambda _: None)
  s = rq.summarize(plan, results, {"madds": [r["madds"] for r in plan]}, samples=50)
  assert s["trainings"] == 4 * 4 + 4 * 2
  nc = s["noise_ceiling"]
  assert nc["n"] == 4 and nc["seeds_per_measurement"] == 2
  assert nc["kendall_tau"] == pytest.approx(-1.0)
  assert s["single_seed_ceiling"]["kendall_tau"] == pytest.approx(1.0)
  assert s["single_seed_ceiling"]["n"] == 8  # every network with seeds 0 and 1
  table = report.markdown_table(s)
  assert "ceiling: mean of seeds 0-1 against mean of seeds 2-3 (4 networks)" in table
  assert "one-seed ceiling: seed 0 against seed 1 (8 networks)" in table
  # Seeds 0 and 1 of every network (16 trainings; all 4 seeds of the 4 ceiling networks are as
  # many, and fewer networks).
  assert s["variance_components"]["networks"] == 8
  assert "reliability" in table
  more = {**results, **{rq.job_key(r["architecture"], 4 + k): {"top1": 50.0 + k}
                        for r in plan if r["ceiling"] for k in range(2)}}
  plan6 = [{**r, "seeds": [0, 1, 2, 3, 4, 5]} if r["ceiling"] else r for r in plan]
  v = rq.summarize(plan6, more, {}, samples=50)["variance_components"]
  assert (v["networks"], v["seeds"]) == (4, [0, 1, 2, 3, 4, 5])  # 24 trainings beat 16
  # Unfinished ceiling networks do not count.
  partial = {k: v for k, v in results.items() if not k.endswith("_s3")}
  assert "noise_ceiling" not in rq.summarize(plan, partial, {}, samples=50)


def test_variance_components_separate_networks_seeds_and_noise():
  # No residual: networks 0, 1, 2 points apart, seed 1 one point lower for all of them.
  gt = {f"n{i}": {0: 80.0 + i, 1: 79.0 + i, 2: 80.5 + i} for i in range(3)}
  v = rq.variance_components(gt, seeds_per_measurement=2)
  assert v["networks"] == 3 and v["seeds"] == [0, 1]
  assert v["seed_effects"] == {"0": pytest.approx(0.5), "1": pytest.approx(-0.5)}
  assert v["noise_sd"] == pytest.approx(0.0, abs=1e-9)
  assert v["network_sd"] == pytest.approx(1.0)  # the sd of 0, 1, 2
  assert v["reliability"] == pytest.approx(1.0) and v["predicted_ceiling_tau"] == pytest.approx(1)
  # Hand-computed with a residual: x = [[0, 2], [2, 0], [4, 4]] -> grand 2, network effects
  # -1, -1, 2 (MS 2 * 6 / 2 = 6), seed effects 0, residual +-1 (MS 4 / 2 = 2): network variance
  # (6 - 2) / 2 = 2; one seed per measurement: r = 2 / (2 + 2) = 0.5, tau (2/pi) asin 0.5 = 1/3.
  v = rq.variance_components({"a": {0: 0, 1: 2}, "b": {0: 2, 1: 0}, "c": {0: 4, 1: 4}}, 1)
  assert v["noise_sd"] == pytest.approx(math.sqrt(2)) and v["network_sd"] == pytest.approx(
      math.sqrt(2))
  assert v["reliability"] == pytest.approx(0.5)
  assert v["predicted_ceiling_tau"] == pytest.approx(1 / 3)
  assert v["predicted_best_estimator_tau"] == pytest.approx(0.5)  # (2/pi) asin(sqrt .5)
  # Simulated: the decomposition recovers the generating sds, and the predicted ceiling matches
  # the tau of two independent 2-seed measurements.
  rng = np.random.default_rng(0)
  n = 400
  true = rng.normal(0, 0.3, n)
  x = true[:, None] + np.array([0.3, -0.6, 0.2, 0.1]) + rng.normal(0, 0.4, (n, 4))
  v = rq.variance_components({str(i): dict(enumerate(x[i])) for i in range(n)}, 2)
  assert v["network_sd"] == pytest.approx(0.3, abs=0.04)
  assert v["noise_sd"] == pytest.approx(0.4, abs=0.03)
  measured = scipy.stats.kendalltau(x[:, :2].mean(1), x[:, 2:].mean(1)).statistic
  assert v["predicted_ceiling_tau"] == pytest.approx(measured, abs=0.06)
  assert rq.variance_components({"a": {0: 1.0, 1: 2.0}}, 2) is None  # fewer than 3 networks


def test_a_benchmark_stored_before_seeds_existed_resumes_with_more_seeds():
  settings = {"num": 4, "two_seeds": 2, "madds_band": [0.3, 0.7], "sample_seed": 0,
              "metric": "ema", "recipe": {}}
  plan = [{"architecture": a, "group": "random", "seeds": s, "madds": 1, "params": 1}
          for a, s in (("a", [0, 1]), ("b", [0, 1]), ("c", [0]), ("d", [0]))]
  old, old_plan = rq.upgrade_stored(settings, plan)
  assert old["ceiling_networks"] == 2 and old["seeds"] == 1 and "two_seeds" not in old
  assert [r["ceiling"] for r in old_plan] == [True, True, False, False]
  assert rq.assign_seeds(old_plan, 1) == old_plan
  now = {k: v for k, v in old.items()} | {"seeds": 2}
  assert rq.resume_settings(old, now)["seeds"] == 2
  assert [r["seeds"] for r in rq.assign_seeds(old_plan, 2)] == [[0, 1, 2, 3]] * 2 + [[0, 1]] * 2
  with pytest.raises(rq.BenchmarkError, match="ceiling_networks"):
    rq.resume_settings(old, {**now, "ceiling_networks": 3})


def test_normalised_and_first_rating_estimators(tmp_path):
  _write_run(tmp_path, seed=6)
  final = rt.read_ratings(str(tmp_path))
  history = tmp_path / "ratings" / "history"
  history.mkdir()
  for (b, s), rf in rt.read_rank_files(str(tmp_path)).items():
    for epoch, shift in ((1, 1.0), (2, 0.0)):
      rt.write_rank_file(str(tmp_path / "h"), b, s, rf.prefix,
                         {p: v + shift * (b + 1) for p, v in rf.scores.items()})
      os.replace(rt.rank_file_path(str(tmp_path / "h"), b, s),
                 history / rt.rank_file_name(b, s).replace(".json", f"_epoch{epoch}.json"))
  archs = ["4444-3323-2222-3332", ss.BOSSNET_T0]
  est = rq.rank_file_estimators(str(tmp_path), archs)
  problem = sp.build_problem(final, 32)
  assert est["bossnas"] == [-sp.evaluate(problem, a).score for a in archs]
  assert est["bossnas_first_rating"] == pytest.approx([v - 10.0 for v in est["bossnas"]])
  z = sp.normalize_scores(final, "zscore")
  for v in z.values():
    vals = np.array(list(v.values()))
    assert abs(vals.mean()) < 1e-9 and vals.std() == pytest.approx(1.0)
  r = sp.normalize_scores(final, "rank")
  for k, v in r.items():
    best = min(final[k], key=final[k].get)
    assert v[best] == 0.0 and max(v.values()) == 1.0
  assert est["bossnas_zscore"][0] == pytest.approx(-sum(
      z[(b, ss.parse_architecture(archs[0]).input_scale(b))][p]
      for b, p in enumerate(ss.parse_architecture(archs[0]).paths)))


def test_naswot_on_a_tiny_bossnet():
  config = bs.config_from_architecture("4444-3323-2222-3332", width_multiplier=1 / 16,
                                       dim_head=8, num_classes=10, empty_stage_stride="stage",
                                       drop_path_rate=0.05)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  a = proxies.naswot_score(config, images)
  assert np.isfinite(a) and a == proxies.naswot_score(config, images)
  # Taps: the stem's BN, 3 BNs + the output of each of the 16 residual blocks (not their shortcut
  # BN), the BN of each of the 2 empty stages (stages 1 and 4 of this network).
  model = bossnet.BossNet(dataclasses.replace(config, drop_path_rate=0.0), jnp.float32)
  variables = bossnet.init_variables(model, jax.random.key(0), 32)
  k, units, taps = proxies._agreement_jit(model, variables, jnp.asarray(images))  # compiled once
  assert int(taps) == 1 + 16 * 4 + 2
  k = np.asarray(k)
  assert np.all(np.diag(k) == int(units)) and np.all(k <= int(units)) and np.all(k == k.T)
  assert a == pytest.approx(np.linalg.slogdet(k.astype(np.float64))[1])
  # Two equal images make the kernel singular.
  same = np.concatenate([images[:8], images[:8]])
  assert proxies.naswot_score(config, same) == -np.inf


def test_resume_settings_survive_json_and_refuse_a_changed_recipe_metric_or_search():
  import ml_collections
  recipe = ml_collections.ConfigDict({"data": {"crop_scale": (0.08, 1.0)}, "train": {"epochs": 10}})
  settings = {"num": 8, "seeds": 1, "ceiling_networks": 2, "madds_band": [0.3, 0.7],
              "sample_seed": 0, "metric": "ema", "proxy_images": 128,
              "naswot_version": rq.NASWOT_VERSION,
              "search": "runs/demo", "long_search": None, "recipe": recipe.to_dict()}
  stored = json.loads(json.dumps(settings))  # tuples come back as lists
  assert rq.resume_settings(stored, settings)["recipe"] == {"data": {"crop_scale": [0.08, 1.0]},
                                                            "train": {"epochs": 10}}
  # A search given now fills a missing one; none given keeps the stored one.
  later = rq.resume_settings(stored, {**settings, "search": None, "long_search": "runs/long"})
  assert later["search"] == "runs/demo" and later["long_search"] == "runs/long"
  for change, word in (({"metric": "raw"}, "metric"), ({"num": 9}, "num"),
                       ({"recipe": {**recipe.to_dict(), "train": {"epochs": 3}}}, "recipe"),
                       ({"search": "runs/other"}, "--search")):
    with pytest.raises(rq.BenchmarkError, match=word):
      rq.resume_settings(stored, {**settings, **change})


def test_zscore_of_a_constant_rank_file_is_zero_and_neg_inf_ranks_last():
  scores = {(0, 3): {(5, 4, 3, 3): 0.7, (4, 4, 4, 4): 0.7, (5, 5, 4, 4): 0.7}}
  assert set(sp.normalize_scores(scores, "zscore")[(0, 3)].values()) == {0.0}
  assert set(sp.normalize_scores(scores, "rank")[(0, 3)].values()) == {0.5}
  # NASWOT's singular kernel (-inf) is the worst verdict, kept in the correlation.
  r = rq.correlation([-np.inf, 1.0, 2.0, 3.0], [10.0, 20.0, 30.0, 40.0], samples=50)
  assert r["n"] == 4 and r["kendall_tau"] == pytest.approx(1.0)
  assert rq.correlation([np.nan, 1.0, 2.0, 3.0], [10.0, 20.0, 30.0, 40.0], samples=50)["n"] == 3


def test_readme_table_equals_the_committed_results():
  root = os.path.join(os.path.dirname(__file__), os.pardir)
  with open(os.path.join(root, "benchmarks", "results", "ranking_quality.json")) as f:
    summary = json.load(f)["summary"]
  with open(os.path.join(root, "README.md")) as f:
    readme = f.read()
  assert report.markdown_table(summary) in readme, (
      "README's ranking table differs from benchmarks/results/ranking_quality.json; paste "
      "report.markdown_table(summary) (the benchmark prints it) into the README.")


def test_update_readme_rewrites_only_the_table_block(tmp_path, population):
  plan = rq.sample(population, 6, 2, seed=4)
  results = rq.run_jobs(plan, {}, _fake_train([]), lambda r: None, log=lambda _: None)
  summary = rq.summarize(plan, results, {"madds": [r["madds"] for r in plan]}, samples=50)
  start, end = report.README_MARKERS
  readme = tmp_path / "README.md"
  readme.write_text(f"# t\nbefore\n{start}\nold table\n{end}\nafter\n")
  assert report.update_readme(str(readme), summary)
  text = readme.read_text()
  assert text == f"# t\nbefore\n{start}\n{report.markdown_table(summary)}\n{end}\nafter\n"
  assert "6 architectures (8 trainings" in text and "| `madds`" in text
  (tmp_path / "other.md").write_text("no block\n")
  assert not report.update_readme(str(tmp_path / "other.md"), summary)


def test_noise_statistics_separate_the_seed_shift_and_the_churn():
  n = 1000
  base = np.zeros(n, bool)
  base[:800] = True
  correct = {}
  for k, arch in enumerate(("a", "b", "c", "d")):
    right = base.copy()
    right[800:800 + 10 * k] = True  # networks differ: 80.0, 81.0, 82.0, 83.0%
    correct[(arch, 0)] = right
    seed1 = right.copy()
    seed1[:20 + 10 * k] = False  # seed 1 costs every network 2-5 points (on those examples)
    correct[(arch, 1)] = seed1
  s = noise.noise_statistics(correct)
  assert s["trainings"] == 8 and s["architectures_with_two_seeds"] == 4
  assert s["seed_shift"]["0"] == pytest.approx(1.75)
  assert s["seed_shift"]["1"] == pytest.approx(-1.75)
  d = s["seed0_minus_seed1"]
  assert d["mean"] == pytest.approx(3.5) and d["sd"] == pytest.approx(np.std([2, 3, 4, 5], ddof=1))
  # Same network, two seeds: they disagree on the 20-50 examples seed 1 got wrong.
  assert s["disagreement_same_architecture"] == pytest.approx(100 * np.mean([20, 30, 40, 50]) / n)
  # Same seed, two networks: on the examples 800.. one of them got right (|k - j| * 10).
  same_seed_0 = np.mean([abs(k - j) * 10 for k in range(4) for j in range(k + 1, 4)])
  same_seed_1 = np.mean([abs(k - j) * 20 for k in range(4) for j in range(k + 1, 4)])
  assert s["disagreement_same_seed"] == pytest.approx(100 * (same_seed_0 + same_seed_1) / 2 / n)
  assert d["sd_from_churn"] == pytest.approx(100 * np.sqrt(np.mean([20, 30, 40, 50]) / n / n))
  assert d["churn_share_of_variance"] == pytest.approx((d["sd_from_churn"] / d["sd"]) ** 2)
  text = noise.format_noise(s)
  assert "seed 0 +1.75" in text and "test-set churn alone would give sd" in text
  with pytest.raises(rq.BenchmarkError, match="no finished training"):
    noise.noise_statistics({})
