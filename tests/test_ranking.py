"""Rating architectures from rank files (exact rank, percentile), launch/rate.py, correlations."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
from test_search import all_chains, write_synthetic_ratings

from bossnas_jax import search_space as ss
from bossnas_jax.ranking_quality import correlation
from bossnas_jax.rating import rank_files as rt
from bossnas_jax.search import architecture, population
from bossnas_jax.search import problem as sp
from bossnas_jax.search import strategies as sr

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def _write_run(workdir, seed=0, per_scale=None, quantum=None, skip=()):
  """A finished run's rank files with random scores (rounded to `quantum` to make ties); the
  (block, input scale) pairs in `skip` lose their file."""
  score = None
  if quantum:
    score = lambda b, s, p, r: float(np.round(r.normal(-3.0, 0.2) / quantum) * quantum)  # noqa: E731
  write_synthetic_ratings(str(workdir), seed=seed, per_scale=per_scale, score=score)
  for b, s in skip:
    os.remove(rt.rank_file_path(str(workdir), b, s))


def test_exhaustive_choice_has_rank_1_in_the_whole_space(tmp_path):
  _write_run(tmp_path, seed=1)
  result, problem = sr.run_search(str(tmp_path), strategy="exhaustive", resolution=32)
  chosen = str(result.architecture)
  run, rated = population.rate(str(tmp_path), [chosen, ss.BOSSNET_T0], resolution=32)
  assert len(run.population) == problem.num_architectures > 1_000_000
  top, t0 = rated
  assert top.rank == 1 and top.tied == 1 and top.score == result.chosen.score
  assert top.percentile == pytest.approx(100.0 * (len(run.population) - 1) / len(run.population))
  assert top.block_scores == result.chosen.block_scores
  # T0's rank equals a direct count over the population.
  assert t0.rank == 1 + int(np.sum(run.population.scores < t0.score))
  assert t0.costs["true"].madds == sp.evaluate(problem, ss.BOSSNET_T0).cost.madds
  assert set(t0.costs) == {"true", "official"}


@pytest.mark.parametrize("quantum", [None, 0.05])
def test_ranks_and_percentiles_equal_a_brute_force_count(tmp_path, quantum):
  _write_run(tmp_path, seed=2, per_scale=4, quantum=quantum)
  run = population.load_run(str(tmp_path), resolution=32)
  chains = list(all_chains(run.population.problem))
  assert len(chains) == len(run.population)
  scores = np.array([sp.evaluate(run.population.problem, a).score for a in chains])
  listed = {str(run.population.architecture(i)): run.population.scores[i]
            for i in range(len(run.population))}
  assert sorted(listed) == sorted(str(a) for a in chains)
  if quantum:
    assert len(np.unique(scores)) < len(scores)  # ties exist
  for a, s in zip(chains[::7], scores[::7]):
    r = population.rate_one(run, a)
    assert listed[str(a)] == s == r.score
    assert r.rank == 1 + int(np.sum(scores < s))
    assert r.tied == int(np.sum(scores == s))
    assert r.percentile == pytest.approx(100.0 * np.sum(scores > s) / len(scores))


def test_errors_name_block_scale_or_position_and_the_rest_is_rated(tmp_path):
  _write_run(tmp_path, seed=3, skip={(2, 0)})  # block 2 never rated from 7x7
  good = "4444-3323-2222-3332"
  from_7 = "4220-1111-0000-0000"  # block 2 takes input at 7x7
  run, out = population.rate(str(tmp_path), [good, "5433-1230-0010-0000", from_7, "12"], 32)
  assert run.population is None and "block2_in7.json" in run.missing
  assert isinstance(out[0], population.Rating) and out[0].rank is None  # no exact rank, still rated
  assert isinstance(out[1], population.RateError) and "position 2" in str(out[1])
  assert isinstance(out[2], population.RateError)
  assert "block 2" in str(out[2]) and "7x7" in str(out[2]) and "block2_in7.json" in str(out[2])
  assert "rated only at input 14x14" in str(out[2])
  assert isinstance(out[3], population.RateError) and "expected 4 paths" in str(out[3])
  # A block with no rank file at all yet.
  _write_run(tmp_path / "partial", seed=3, skip={(3, 0), (3, 1)})
  _, (e,) = population.rate(str(tmp_path / "partial"), [good], 32)
  assert "block 3 is not rated yet" in str(e)


def test_launch_rate_prints_every_architecture_and_writes_json(tmp_path):
  _write_run(tmp_path, seed=4)
  result, _ = sr.run_search(str(tmp_path), strategy="exhaustive", resolution=32)
  chosen = str(result.architecture)
  listing = tmp_path / "archs.txt"
  listing.write_text(f"# two architectures\n{ss.BOSSNET_T0}\n\n5433-1230-0010-0000\n")
  out_json = tmp_path / "rated.json"
  chosen_json = tmp_path / "chosen.json"  # A file as an argument is read as --archs is.
  chosen_json.write_text(json.dumps({"architecture": chosen}))
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "rate.py"), "--workdir", str(tmp_path),
       "--resolution", "32", str(chosen_json), "--archs", str(listing), "--json", str(out_json)],
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1, proc.stderr  # one architecture is malformed
  lines = proc.stdout.splitlines()
  row = next(line for line in lines if line.startswith(chosen))
  assert f"1 of {result.num_architectures:,}" in row
  assert any(line.startswith(ss.BOSSNET_T0) for line in lines)
  assert any(line.startswith("error:") and "position 2" in line for line in lines)
  record = json.loads(out_json.read_text())
  assert [r.get("rank") for r in record["ratings"]][0] == 1
  assert "error" in record["ratings"][2]
  assert record["num_architectures"] == result.num_architectures
  # An architecture.json as the list, and a workdir without ratings: one clear line, status 2.
  arch_json = tmp_path / "architecture.json"
  arch_json.write_text(json.dumps({"architecture": chosen}))
  assert population.read_architecture_list(str(arch_json)) == [chosen]
  listed = tmp_path / "list.json"  # A JSON list of strings; an empty one is an error.
  listed.write_text(json.dumps([chosen, ss.BOSSNET_T0]))
  assert population.read_architecture_list(str(listed)) == [chosen, ss.BOSSNET_T0]
  listed.write_text("[]")
  with pytest.raises(population.RateError, match="holds no architecture"):
    population.read_architecture_list(str(listed))
  with pytest.raises(architecture.ArchitectureFileError,
                     match="not an architecture.json: it holds a JSON list"):
    architecture.load_architecture(str(listed))
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "rate.py"), "--workdir",
       str(tmp_path / "nothing"), chosen], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and proc.stderr.count("\n") == 1
  assert "does not exist" in proc.stderr


def test_correlations_equal_scipy_with_ties():
  rng = np.random.default_rng(0)
  for n in (5, 12, 40):
    x = rng.integers(0, 6, n).astype(float)  # many ties
    y = x + rng.integers(-3, 4, n)
    assert correlation.kendall_tau_b(x, y) == pytest.approx(
        scipy.stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)
    assert correlation.spearman_rho(x, y) == pytest.approx(
        scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
  # Hand-computed: pairs (1,2),(1,3),(2,3) of x=[1,2,3], y=[1,3,2] -> C=2, D=1 -> tau 1/3.
  assert correlation.kendall_tau_b([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
  assert sp.average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
  x = np.arange(30.0)
  y = x + rng.normal(0, 3, 30)
  lo, hi = correlation.bootstrap_interval(x, y, samples=300)
  assert 0.5 < lo < correlation.kendall_tau_b(x, y) < hi <= 1.0
  assert (lo, hi) == correlation.bootstrap_interval(x, y, samples=300)  # seeded
  assert correlation.bootstrap_interval(x, y, samples=300, seed=1) != (lo, hi)


def test_tau_within_and_between_groups_and_partial_tau():
  rng = np.random.default_rng(1)
  x = rng.integers(0, 5, 24).astype(float)  # ties
  y = x + rng.integers(-2, 3, 24)
  groups = ["a", "b", "c"] * 8
  within = correlation.group_pairs(groups, within=True)
  between = correlation.group_pairs(groups, within=False)
  assert within.shape == (24, 24) and not np.any(within & between)
  assert np.all(within | between) and np.all(np.diag(within))
  # Within one group only, tau-b over its pairs is scipy's tau-b of that group.
  one = correlation.group_pairs(["a"] * 8 + ["b"] * 16, within=True)
  assert correlation.kendall_tau_b(x, y, one & (np.arange(24) < 8)[:, None]) == pytest.approx(
      scipy.stats.kendalltau(x[:8], y[:8]).statistic, abs=1e-12)
  # Hand-computed: x=[1,2,3,4], y=[1,3,2,4]; the pairs between groups {0,1} and {2,3} are
  # (0,2),(0,3),(1,3) concordant and (1,2) discordant: tau (3 - 1) / 4.
  assert correlation.kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4],
                                   correlation.group_pairs([0, 0, 1, 1], False)) == 0.5
  assert math.isnan(correlation.kendall_tau_b([1, 1, 2, 2], [1, 3, 2, 4],
                                              correlation.group_pairs([0, 0, 1, 1], True)))
  # Kendall's partial tau, from scipy's three taus; the control's sign does not matter.
  z = x + rng.normal(0, 2, 24)
  t = {k: scipy.stats.kendalltau(*v).statistic for k, v in
       {"xy": (x, y), "xz": (x, z), "yz": (y, z)}.items()}
  want = (t["xy"] - t["xz"] * t["yz"]) / math.sqrt((1 - t["xz"] ** 2) * (1 - t["yz"] ** 2))
  assert correlation.partial_kendall_tau(x, y, z) == pytest.approx(want, abs=1e-12)
  assert correlation.partial_kendall_tau(x, y, -z) == pytest.approx(want, abs=1e-12)
  # y that is z's order leaves nothing to explain.
  assert math.isnan(correlation.partial_kendall_tau(x, z, z))
  lo, hi = correlation.bootstrap_interval(x, y, correlation.partial_kendall_tau, 200, more=[z])
  assert lo < want < hi and hi - lo < 1
  # A statistic undefined in most resamples gives no interval: tau-b of x and y that are each
  # constant but for one row (rows 0 and 1) is defined only if a resample holds both (~40%).
  fx, fy = np.zeros(20), np.zeros(20)
  fx[0] = fy[1] = 1.0
  assert all(map(math.isnan, correlation.bootstrap_interval(fx, fy, samples=200)))


@pytest.mark.parametrize("how", ["zscore", "rank"])
def test_normalised_search_and_rating_agree_with_brute_force(tmp_path, how):
  _write_run(tmp_path, seed=7, per_scale=5)
  raw = rt.read_ratings(str(tmp_path))
  norm = sp.normalize_scores(raw, how)
  problem = sp.build_problem(norm, 32)
  best = min(all_chains(problem), key=lambda a: sp.evaluate(problem, a).key())
  result, _ = sr.run_search(str(tmp_path), strategy="exhaustive", resolution=32, normalize=how)
  assert str(result.architecture) == str(best)
  run, (r,) = population.rate(str(tmp_path), [best], resolution=32, normalize=how)
  assert r.rank == 1 and run.normalize == how
  assert r.block_scores == tuple(norm[(b, best.input_scale(b))][p]
                                 for b, p in enumerate(best.paths))
  with pytest.raises(sp.SearchError, match="normalize"):
    sp.settings_from(None, normalize="minmax")
