"""Rank files, the per-block BossNet cost decomposition and the three search strategies, on
synthetic rank files with seeded random scores over the real candidate lists."""

import functools
import itertools
import json
import math
import os
import random

import numpy as np
import pytest

from bossnas_jax import search_space as ss
from bossnas_jax.models import cost
from bossnas_jax.rating import rank_files as rt
from bossnas_jax.search import export
from bossnas_jax.search import problem as sp
from bossnas_jax.search import strategies as sr

# ------------------------------------------------------------------------------------------------
# Synthetic rank files (also used by test_export.py).


@functools.cache
def prefix_for(block: int, in_scale: int) -> str:
  """Some valid frozen chain of blocks 0..block-1 ending at `in_scale`."""
  if block == 0:
    return ""
  for s in ss.input_scales(block - 1):
    for p in ss.candidates(block - 1, s):
      if ss.output_scale(p) == in_scale:
        try:
          head = prefix_for(block - 1, s)
        except LookupError:
          continue
        return "-".join(x for x in (head, ss.format_path(p)) if x)
  raise LookupError((block, in_scale))


def write_synthetic_ratings(workdir, seed=0, per_scale=None, score=None) -> dict:
  """Rank files for every (block, input scale) that the rated candidates reach. `per_scale`: rate
  only that many random candidates per (block, scale); `score(block, in_scale, path, rng)`:
  the score (default: normal noise)."""
  rng = np.random.default_rng(seed)
  score = score or (lambda b, s, p, r: float(r.normal(-3.0, 0.3)))
  reach, written = {ss.STEM_SCALE}, {}
  for b in range(ss.NUM_BLOCKS):
    nxt = set()
    for s in sorted(reach, reverse=True):
      cands = ss.candidates(b, s)
      if per_scale and per_scale < len(cands):
        cands = [cands[i] for i in sorted(rng.choice(len(cands), per_scale, replace=False))]
      scores = {p: score(b, s, p, rng) for p in cands}
      rt.write_rank_file(workdir, b, s, prefix_for(b, s), scores, rating_index=2, epoch=6,
                         num_images=10000)
      written[(b, s)] = scores
      nxt |= {ss.output_scale(p) for p in cands}
    reach = nxt
  return written


def all_chains(problem: sp.Problem):
  """Brute force: every rated architecture."""
  def rec(b, s, prefix):
    if b == ss.NUM_BLOCKS:
      yield ss.Architecture(tuple(prefix))
      return
    t = problem.table(b, s)
    for p in t.paths:
      yield from rec(b + 1, ss.output_scale(p), prefix + [p])
  return list(rec(0, ss.STEM_SCALE, []))


def random_architectures(n, seed=0):
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    s, paths = ss.STEM_SCALE, []
    for b in range(ss.NUM_BLOCKS):
      p = rng.choice(ss.candidates(b, s))
      paths.append(p)
      s = ss.output_scale(p)
    out.append(ss.Architecture(tuple(paths)))
  return out


def triple(e: sp.Evaluated):
  return (e.score, e.cost.madds, e.cost.params)


def naive_front(points):
  pts = [tuple(p) for p in points]
  keep = set()
  for i, a in enumerate(pts):
    dominated = any(all(x <= y for x, y in zip(b, a)) and (b != a or j < i)
                    for j, b in enumerate(pts) if j != i)
    if not dominated:
      keep.add(a)
  return keep


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """4 rated candidates per (block, scale): few hundred architectures, brute-forceable."""
  d = str(tmp_path_factory.mktemp("small"))
  write_synthetic_ratings(d, seed=3, per_scale=4)
  return d, sp.load_problem(d)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("full"))
  write_synthetic_ratings(d, seed=1)
  return d, sp.load_problem(d)


# ------------------------------------------------------------------------------------------------
# Cost decomposition.


def test_block_costs_add_up_to_architecture_cost():
  archs = random_architectures(120, seed=0) + [
      ss.parse_architecture(a) for a in (ss.BOSSNET_T0, "4420-1100-0000-0000",
                                         "4433-3333-3333-3333", "5433-3232-3232-3232")]
  assert any(a.paths[0][0] == 4 for a in archs)  # empty stage 1
  assert any(ss.output_scale(a.paths[3]) == 1 for a in archs)  # empty stage 4
  variants = [(224, "true", {}), (224, "official", {}), (288, "true", {"last_stride": 1}),
              (64, "true", {"se": False, "act": "relu", "width_multiplier": 0.25,
                            "dim_head": 16}), (256, "official", {"se": False})]
  for res, conv, kw in variants:
    fixed = cost.searched_fixed_cost(res, conv, **kw)
    for a in archs:
      parts = [cost.searched_block_cost(b, a.input_scale(b), p, res, conv, **kw)
               for b, p in enumerate(a.paths)]
      want = cost.architecture_cost(a, res, conv, empty_stage_stride="stage", **kw)
      assert cost.total([fixed, *parts]) == want, (str(a), res, conv, kw)


def test_empty_stage_stride_for_searched_networks():
  a = "4420-1100-0000-0000"  # Block 0 starts at 28x28: BossNet stage 1 is empty.
  staged = cost.architecture_cost(a, empty_stage_stride="stage")
  official = cost.architecture_cost(a, empty_stage_stride="official")
  assert staged.madds > official.madds  # The official layout halves every later stage.
  assert staged.params == official.params
  # T0 has no empty stage: both layouts agree, and the named model is unchanged.
  assert cost.architecture_cost(ss.BOSSNET_T0, empty_stage_stride="stage") == \
      cost.bossnet_cost("bossnet_t0")
  with pytest.raises(ValueError, match="official"):
    cost.searched_block_cost(1, 2, (3, 2, 3, 0), empty_stage_stride="official")
  with pytest.raises(ss.SearchSpaceError, match="position 1"):
    cost.searched_block_cost(1, 2, (5, 2, 3, 0))


# ------------------------------------------------------------------------------------------------
# Rank files.


def test_rank_file_round_trip(tmp_path):
  d = str(tmp_path)
  scores = {(3, 2, 3, 0): -3.2101, (3, 3, 3, 0): -3.5, (2, 2, 0, 0): -2.0}
  path = rt.write_rank_file(d, 1, 1, [(5, 4, 3, 3)], scores, rating_index=2, epoch=6,
                            num_images=10000)
  assert path == os.path.join(d, "ratings", "block1_in14.json")
  with open(path) as f:
    record = json.load(f)
  assert record["prefix"] == "5433" and record["epoch"] == 6
  assert [c["path"] for c in record["candidates"]] == ["3330", "3230", "2200"]
  c = record["candidates"][0]
  want = cost.path_cost(ss.Dims(), 1, 1, (3, 3, 3, 0))
  assert (c["madds"], c["params"], c["out_scale"]) == (want.madds, want.params, 0)
  rf = rt.read_rank_files(d)[(1, 1)]
  assert rf.scores == {(3, 3, 3, 0): -3.5, (3, 2, 3, 0): -3.2101, (2, 2, 0, 0): -2.0}
  assert (rf.prefix, rf.rating_index, rf.num_images) == ("5433", 2, 10000)
  assert rt.read_ratings(d) == {(1, 1): rf.scores}


def test_rank_file_writer_rejects_bad_input(tmp_path):
  d = str(tmp_path)
  with pytest.raises(rt.RatingsError, match="position 1"):
    rt.write_rank_file(d, 1, 1, "5433", {(5, 4, 3, 3): 1.0})  # Block 1 has no op 5.
  with pytest.raises(rt.RatingsError, match="finite"):
    rt.write_rank_file(d, 1, 1, "5433", {(3, 3, 3, 0): math.nan})
  with pytest.raises(rt.RatingsError, match="ends at scale 7"):
    rt.write_rank_file(d, 1, 1, "5430", {(3, 3, 3, 0): 1.0})
  with pytest.raises(rt.RatingsError, match="never takes input"):
    rt.write_rank_file(d, 2, 2, "5433-4433", {(3, 3, 3, 0): 1.0})
  assert not os.path.exists(os.path.join(d, "ratings"))


def _write(d, name, text):
  os.makedirs(os.path.join(d, "ratings"), exist_ok=True)
  path = os.path.join(d, "ratings", name)
  with open(path, "w") as f:
    f.write(text)
  return path


@pytest.mark.parametrize("name,text,match", [
    ("block0_in56.json", "{not json", "not readable JSON"),
    ("block0_in56.json", '{"block": 0, "in_scale": 3, "prefix": ""}', "missing field"),
    ("block0_in56.json", '{"block": 0, "in_scale": 3, "prefix": "", "candidates": '
     '[{"path": "5433", "score": NaN}]}', "finite"),
    ("block0_in56.json", '{"block": 0, "in_scale": 3, "prefix": "", "candidates": '
     '[{"path": "3333", "score": 1}]}', "position 1"),
    ("block1_in14.json", '{"block": 0, "in_scale": 3, "prefix": "", "candidates": '
     '[{"path": "5433", "score": 1}]}', "expected block0_in56.json"),
    ("block0_in56.json", '{"block": 0, "in_scale": 3, "prefix": "", "candidates": '
     '[{"path": "5433", "score": 1, "out_scale": 0}]}', "out_scale"),
])
def test_malformed_rank_file(tmp_path, name, text, match):
  path = _write(str(tmp_path), name, text)
  with pytest.raises(rt.RatingsError, match=match) as e:
    rt.read_ratings(str(tmp_path))
  assert path in str(e.value)


def test_missing_workdir_ratings_and_rank_file(tmp_path):
  with pytest.raises(ValueError, match="does not exist; pass the --workdir"):
    sr.run_search(str(tmp_path / "nope"))
  with pytest.raises(rt.RatingsError, match="no rank files .* launch/train_blocks.py"):
    sr.run_search(str(tmp_path))
  write_synthetic_ratings(str(tmp_path), per_scale=4)
  missing = rt.rank_file_path(str(tmp_path), 2, 1)
  os.remove(missing)
  with pytest.raises(sp.SearchError, match="missing rank file") as e:
    sr.run_search(str(tmp_path))
  assert missing in str(e.value)


def test_settings():
  with pytest.raises(sp.SearchError, match="strategy='random'.*evolution, exhaustive, greedy"):
    sp.settings_from(None, strategy="random")
  with pytest.raises(sp.SearchError, match="resolution=200"):
    sp.SearchSettings(resolution=200)
  with pytest.raises(sp.SearchError, match="max_madds"):
    sp.SearchSettings(max_madds=-1.0)
  from configs import hytra  # The experiment config: its search section and run seed.
  config = hytra.get_config("demo")
  config.seed = 7
  st = sp.settings_from(config, max_madds=4e9)
  assert (st.population, st.generations, st.seed, st.max_madds, st.strategy) == (
      20, 10, 7, 4e9, "exhaustive")
  assert st.resolution == 32  # The demo's final BossNet size.
  st = sp.settings_from({"strategy": "greedy", "max_params": None, "other": 1})
  assert st.strategy == "greedy" and st.max_params is None


# ------------------------------------------------------------------------------------------------
# Strategies.


@pytest.mark.parametrize("columns,trials,values,rows,seed", [(3, 30, 6, 60, 0),
                                                            (4, 100, 5, 50, 1)])  # 4: latency
def test_nondominated_matches_naive(columns, trials, values, rows, seed):
  rng = np.random.default_rng(seed)
  for _ in range(trials):
    pts = rng.integers(0, values, size=(int(rng.integers(1, rows)), columns)).astype(np.float64)
    got = sr.nondominated(pts)
    assert {tuple(p) for p in pts[got]} == naive_front(pts)
    assert len(got) == len({tuple(p) for p in pts[got]})  # One of each equal group.


def test_exhaustive_matches_brute_force(small):
  _, problem = small
  archs = all_chains(problem)
  assert len(archs) == problem.num_architectures and 50 < len(archs) < 1000
  evals = [sp.evaluate(problem, a) for a in archs]
  front = sr.pareto_front(problem)
  assert {triple(e) for e in front} == naive_front([triple(e) for e in evals])
  madds = sorted(e.cost.madds for e in evals)
  params = sorted(e.cost.params for e in evals)
  budgets = [(None, None), (madds[len(madds) // 2], None), (None, params[len(params) // 3]),
             (madds[len(madds) // 3], params[2 * len(params) // 3]), (madds[0], None)]
  for mm, mp in budgets:
    st = sp.SearchSettings(strategy="exhaustive", max_madds=mm, max_params=mp)
    ok = [e for e in evals if sp.within(e, st)]
    best = min(ok, key=sp.Evaluated.key)
    got = sr.search(problem, st).chosen
    assert got.key() == best.key() and sp.within(got, st)


def test_exhaustive_full_space_matches_vectorized_brute_force(full):
  _, problem = full
  # Every architecture of the real space, as arrays: extend chains block by block.
  chains = {ss.STEM_SCALE: np.array([[0.0, problem.fixed.madds, problem.fixed.params]])}
  for b in range(ss.NUM_BLOCKS):
    nxt = {}
    for s, pts in chains.items():
      t = problem.table(b, s)
      cand = np.stack([t.scores, t.madds, t.params], 1)
      for o in np.unique(t.out_scales):
        add = pts[:, None, :] + cand[t.out_scales == o][None]
        nxt.setdefault(int(o), []).append(add.reshape(-1, 3))
    chains = {o: np.concatenate(v) for o, v in nxt.items()}
  pts = np.concatenate(list(chains.values()))
  assert len(pts) == problem.num_architectures == 1_615_872
  for q_m, q_p in [(1.0, 1.0), (0.2, 1.0), (1.0, 0.1), (0.5, 0.5), (0.05, 0.9)]:
    mm, mp = np.quantile(pts[:, 1], q_m), np.quantile(pts[:, 2], q_p)
    ok = (pts[:, 1] <= mm) & (pts[:, 2] <= mp)
    got = sr.search(problem, sp.SearchSettings(strategy="exhaustive", max_madds=float(mm),
                                               max_params=float(mp))).chosen
    assert got.score == pytest.approx(pts[ok, 0].min(), abs=1e-9)
    assert got.cost.madds <= mm and got.cost.params <= mp


def test_evolution_finds_the_optimum(small):
  _, problem = small
  for mm in (None, float(np.median([sp.evaluate(problem, a).cost.madds
                                    for a in all_chains(problem)]))):
    st = sp.SearchSettings(strategy="evolution", max_madds=mm, population=20, generations=10,
                           seed=0)
    res = sr.search(problem, st)
    assert res.chosen.key() == res.optimum.key()
    assert res.within_budget and not res.notes


def test_evolution_on_the_full_space_respects_budgets(full):
  _, problem = full
  st = sp.SearchSettings(max_madds=3.6e9, max_params=35e6, population=20, generations=8,
                         seed=1)
  evo = sr._Evolution(problem, st, sr.check_budget(problem, st))
  best = evo.run()
  assert len(evo.members) > 100
  assert all(sp.within(evo.eval(c), st) for c in evo.members)
  assert sp.within(best, st)
  assert best.score <= sr.best_within(sr.pareto_front(problem), st).score + 0.5


def test_greedy_is_the_official_chain_rule(small):
  d, problem = small
  files = rt.read_rank_files(d)
  res = sr.search(problem, sp.SearchSettings(strategy="greedy"))
  s = ss.STEM_SCALE
  for b, p in enumerate(res.architecture.paths):
    top = next(iter(files[(b, s)].scores))  # The rank file's first (best) entry.
    assert p == top
    s = ss.output_scale(p)
  # Greedy cannot respect a budget: one with it is refused, not silently broken.
  with pytest.raises(sp.SearchError, match="greedy.*cannot respect a budget.*exhaustive"):
    sp.SearchSettings(strategy="greedy", max_madds=res.chosen.cost.madds - 1)


def test_budgets_are_respected(small):
  _, problem = small
  evals = [sp.evaluate(problem, a) for a in all_chains(problem)]
  madds = sorted(e.cost.madds for e in evals)
  params = sorted(e.cost.params for e in evals)
  for i in range(1, 6):
    st_kw = dict(max_madds=madds[i * len(madds) // 6], max_params=params[-1 - i])
    for strategy in ("evolution", "exhaustive"):
      st = sp.SearchSettings(strategy=strategy, population=10, generations=3, **st_kw)
      try:
        res = sr.search(problem, st)
      except sp.SearchError:
        assert not any(sp.within(e, st) for e in evals)
        continue
      assert res.within_budget and sp.within(res.chosen, st)


def test_infeasible_budget_names_the_minima(small):
  _, problem = small
  evals = [sp.evaluate(problem, a) for a in all_chains(problem)]
  m = min(e.cost.madds for e in evals)
  p = min(e.cost.params for e in evals)
  for strategy in ("exhaustive", "evolution"):  # (greedy takes no budget at all.)
    with pytest.raises(sp.SearchError, match="no architecture meets the budget") as e:
      sr.search(problem, sp.SearchSettings(strategy=strategy, max_madds=m - 1))
    assert f"{m:,}" in str(e.value) and f"{p:,}" in str(e.value)
  # Each bound alone can be met, both together not: the cheapest in MAdds is not the smallest.
  pairs = [(e.cost.madds, e.cost.params) for e in evals]
  jm = min(pairs, key=lambda x: (x[0], x[1]))
  jp = min(pairs, key=lambda x: (x[1], x[0]))
  assert not any(a <= jm[0] and b <= jp[1] for a, b in pairs)
  with pytest.raises(sp.SearchError, match="no architecture meets both"):
    sr.search(problem, sp.SearchSettings(max_madds=jm[0], max_params=jp[1]))


def test_malformed_or_unrated_architecture(small):
  _, problem = small
  with pytest.raises(ss.SearchSpaceError, match="position 1"):
    sp.evaluate(problem, "5433-5230-0010-0000")
  with pytest.raises(ss.SearchSpaceError, match="expected 4 paths"):
    sp.evaluate(problem, "5433-3230")
  rated = {a for a in all_chains(problem)}
  unrated = next(a for a in itertools.islice(random_architectures(500, 5), 500)
                 if a not in rated)
  with pytest.raises(sp.SearchError, match="has no rating"):
    sp.evaluate(problem, unrated)


# ------------------------------------------------------------------------------------------------
# Latency as a third cost (docs/method.md#latency).


def _latency_table(path, seed=0, **settings):
  """A latency table of every part, made up (the search only adds its entries)."""
  import dataclasses

  from bossnas_jax.models import latency
  rng = np.random.default_rng(seed)
  header = {"format": latency.FORMAT, latency.CONSTANT: 0.25,  # as latency_model --calibrate
            **dataclasses.asdict(latency.TableSettings(**settings))}
  entries = {}
  for n in latency.part_names():
    ms = float(rng.uniform(0.5, 5.0))
    entries[n] = {"count": 2, "mean": ms, "std": 0.0, "median": ms, "min": ms}
  with open(path, "w") as f:
    json.dump({"header": header, "entries": entries}, f)
  return str(path)


def test_exhaustive_and_evolution_with_a_latency_budget(small, tmp_path):
  from bossnas_jax.models import latency
  d, _ = small
  table = _latency_table(tmp_path / "latency.json")
  problem = sp.load_problem(d, sp.SearchSettings(latency_table=table))
  archs = all_chains(problem)
  evals = [sp.evaluate(problem, a) for a in archs]
  loaded = latency.load_table(table)
  for e in evals[::7]:  # the search's latency is the table's prediction, constant included
    assert e.latency_ms == pytest.approx(latency.predict(loaded, e.architecture))
  front = sr.pareto_front(problem)
  quad = lambda e: (e.score, e.cost.madds, e.cost.params, e.latency_ms)  # noqa: E731
  assert {quad(e) for e in front} == naive_front([quad(e) for e in evals])
  lat = sorted(e.latency_ms for e in evals)
  madds = sorted(e.cost.madds for e in evals)
  for ml, mm in [(lat[len(lat) // 3], None), (lat[len(lat) // 2], madds[len(madds) // 2]),
                 (lat[0], None)]:
    st = sp.SearchSettings(strategy="exhaustive", max_latency_ms=ml, max_madds=mm,
                           latency_table=table)
    best = min((e for e in evals if sp.within(e, st)), key=sp.Evaluated.key)
    got = sr.search(sp.load_problem(d, st), st)
    assert got.chosen.key() == best.key() and got.within_budget
    assert got.chosen.latency_ms <= ml
    evo = sr.search(problem, dataclasses_replace(st, strategy="evolution", seed=2))
    assert evo.within_budget and evo.chosen.latency_ms <= ml
  # The Pareto plot gains a panel of score against predicted latency (two panels: wider).
  from PIL import Image
  png = export.plot_pareto(str(tmp_path / "pareto.png"), got, problem, cloud=50)
  width, height = Image.open(png).size
  assert width > 2 * height
  with pytest.raises(sp.SearchError, match=r"lowest predicted latency .* ms.*--max_latency_ms"):
    sr.search(problem, sp.SearchSettings(max_latency_ms=lat[0] * 0.9, latency_table=table))


def dataclasses_replace(settings, **kw):
  import dataclasses
  return dataclasses.replace(settings, **kw)


def test_latency_settings_and_tables_are_checked(small, tmp_path):
  from bossnas_jax.models import latency
  d, _ = small
  with pytest.raises(sp.SearchError, match="needs a latency table"):
    sp.SearchSettings(max_latency_ms=5.0)
  table = _latency_table(tmp_path / "t.json")
  with pytest.raises(sp.SearchError, match="greedy"):
    sp.SearchSettings(strategy="greedy", max_latency_ms=5.0, latency_table=table)
  other = _latency_table(tmp_path / "b8.json", batch=8, dtype="bfloat16")
  with pytest.raises(latency.LatencyError, match=r"batch 8 in the table, 1 here.*dtype"):
    sp.load_problem(d, sp.SearchSettings(latency_table=other))
  partial = json.load(open(table))
  del partial["entries"]["stem"]
  (tmp_path / "partial.json").write_text(json.dumps(partial))
  with pytest.raises(latency.LatencyError, match="no entry 'stem'"):
    sp.load_problem(d, sp.SearchSettings(latency_table=str(tmp_path / "partial.json")))


def test_research_with_a_latency_budget_records_the_prediction(small, tmp_path):
  from bossnas_jax.search import export
  d, _ = small
  table = _latency_table(tmp_path / "t.json")
  free = export.research(d, str(tmp_path / "free"), latency_table=table, log=None)
  problem = sp.load_problem(d, sp.SearchSettings(latency_table=table))
  lowest = min(sp.evaluate(problem, a).latency_ms for a in all_chains(problem))
  budget = round(0.5 * (free.search.chosen.latency_ms + lowest), 3)  # between the two
  got = export.research(d, latency_table=table, max_latency_ms=budget, log=None)
  assert got.search.chosen.latency_ms <= budget
  assert got.files["architecture_json"].endswith(
      f"exhaustive_latency{budget:g}ms_res224/architecture.json")
  record = json.load(open(got.files["architecture_json"]))
  assert record["latency"]["predicted_ms"] == pytest.approx(got.search.chosen.latency_ms)
  assert record["latency"]["table"] == table and record["budget"]["max_latency_ms"] == budget
  assert record["latency"]["measured_on"]["batch"] == 1
