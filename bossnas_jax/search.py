"""Search over whole architectures from the per-block rank files (docs/method.md#search,
#search-and-export, #d9).

An architecture is one rated candidate per block with chaining scales (block b+1 takes its input
at the scale where block b's path ends). Its score is the sum of its blocks' scores from the rank
files (lower is better; the official MBConv/NATS ranking rule, docs/method.md#ranking-evaluation)
and its cost is that of its final BossNet at the target resolution (`cost.py`; the true convention
unless told otherwise).

Both add up over blocks: a block's score is read at its input scale, and a searched BossNet's cost
is a fixed stem/head part plus one term per (block, input scale, path)
(`cost.searched_block_cost`). So the whole space (1.6M architectures at full size) is searched
through small per-(block, scale) tables instead of by building networks:

* ``exhaustive``: the exact Pareto front of (score, MAdds, params), by dynamic programming over
  blocks that keeps, per output scale, the chains no other chain beats on all three. Any best
  architecture under budgets is on that front, so the choice is certified optimal.
* ``evolution``: the paper's evolutionary search: tournament selection, crossover at blocks where
  both parents change scale alike, per-block mutation; every child is a valid chain under the
  budgets (partial chains are only extended where some completion still fits).
* ``greedy``: the official rule: block by block the best-scored candidate, the next block from its
  output scale. It cannot respect a budget, so a budget with it is refused.

Searched architectures are costed with every stage at its own stride (`empty_stage_stride =
"stage"`): a path starting at 28x28 leaves BossNet's stage 1 empty, and the official layout would
then run every later stage at half the scale the search chose.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from bossnas_jax import ratings as rt
from bossnas_jax import search_space as ss
from bossnas_jax.infra import errors
from bossnas_jax.models import cost

STRATEGIES = ("evolution", "exhaustive", "greedy")
# How block scores are made comparable before they are added (see `normalize_scores`).
NORMALIZATIONS = ("none", "zscore", "rank")
# Searched networks keep every stage at its own stride (see the module docstring).
EMPTY_STAGE_STRIDE = "stage"


class SearchError(errors.UserError, ValueError):
  """Bad search settings, missing rank files or a budget no architecture meets."""


# ------------------------------------------------------------------------------------------------
# Settings.


@dataclasses.dataclass(frozen=True)
class SearchSettings:
  strategy: str = "exhaustive"     # As the main job's config (configs/hytra.py).
  max_madds: float | None = None   # Budget on the final BossNet, in `convention`.
  max_params: float | None = None
  resolution: int = 224            # Input side of the final BossNet (not of the supernet).
  convention: str = "true"         # Cost convention of the budgets: 'true' or 'official'.
  normalize: str = "none"          # Block scores per (block, input scale): NORMALIZATIONS.
  population: int = 50
  generations: int = 20
  mutation_prob: float = 0.1
  crossover_prob: float = 0.5
  tournament: int = 5
  seed: int = 0

  def __post_init__(self):
    def bad(field, allowed):
      raise SearchError(f"search setting {field}={getattr(self, field)!r}: {allowed}.")

    if self.strategy not in STRATEGIES:
      bad("strategy", f"expected one of {', '.join(STRATEGIES)}")
    if self.convention not in cost.CONVENTIONS:
      bad("convention", f"expected one of {', '.join(cost.CONVENTIONS)}")
    if self.normalize not in NORMALIZATIONS:
      bad("normalize", f"expected one of {', '.join(NORMALIZATIONS)}")
    for f in ("max_madds", "max_params"):
      v = getattr(self, f)
      if v is not None and not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
        bad(f, "a positive number, or None for no budget")
    if self.strategy == "greedy" and (self.max_madds or self.max_params):
      raise SearchError(
          "strategy='greedy' is the official rule and cannot respect a budget "
          f"({self.describe_budget()}); search under a budget with strategy 'exhaustive' (exact) "
          "or 'evolution', or drop the budget for the greedy choice.")
    if not isinstance(self.resolution, int) or self.resolution <= 0 or self.resolution % 32:
      bad("resolution", "a positive multiple of 32 such as 224 or 256")
    if self.population < 2:
      bad("population", "at least 2")
    if self.generations < 0:
      bad("generations", "0 or more")
    if self.tournament < 1:
      bad("tournament", "at least 1")
    for f in ("mutation_prob", "crossover_prob"):
      if not 0.0 <= getattr(self, f) <= 1.0:
        bad(f, "a probability in [0, 1]")

  def describe_budget(self) -> str:
    parts = [f"MAdds <= {self.max_madds:.4g}" if self.max_madds else "",
             f"params <= {self.max_params:.4g}" if self.max_params else ""]
    text = " and ".join(p for p in parts if p)
    return f"{text} ({self.convention} convention, at {self.resolution})" if text else "none"


_FIELDS = tuple(f.name for f in dataclasses.fields(SearchSettings))


def settings_from(config_or_args=None, **overrides) -> SearchSettings:
  """SearchSettings from an experiment config (its `search` section and `seed`), a mapping or
  ConfigDict of search fields, an argparse Namespace, or SearchSettings; then `overrides`.
  Fields that are missing or None keep their defaults; unknown keys are ignored."""
  if isinstance(config_or_args, SearchSettings):
    values = dataclasses.asdict(config_or_args)
  else:
    src = config_or_args
    if src is not None and not isinstance(src, Mapping) and not hasattr(src, "keys"):
      src = vars(src)  # argparse.Namespace and the like.
    src = dict(src or {})
    values = {}
    if "search" in src:  # A whole experiment config: the run's seed, then its search section.
      if src.get("seed") is not None:
        values["seed"] = src["seed"]
      src = dict(src["search"])
    values.update({k: v for k, v in src.items() if k in _FIELDS and v is not None})
  values.update({k: v for k, v in overrides.items() if v is not None})
  unknown = sorted(set(values) - set(_FIELDS))
  if unknown:
    raise SearchError(f"unknown search setting(s) {unknown}; known: {', '.join(_FIELDS)}.")
  for f in ("population", "generations", "tournament", "seed", "resolution"):
    if f in values and isinstance(values[f], float) and values[f].is_integer():
      values[f] = int(values[f])
  return SearchSettings(**values)


# ------------------------------------------------------------------------------------------------
# The problem: per-(block, input scale) tables of rated candidates with their score and cost.


@dataclasses.dataclass(frozen=True)
class BlockTable:
  block: int
  in_scale: int
  paths: tuple[ss.Path, ...]
  scores: np.ndarray  # float64
  madds: np.ndarray   # int64, this block's share of the BossNet's MAdds
  params: np.ndarray  # int64
  out_scales: np.ndarray
  index: dict[ss.Path, int]


@dataclasses.dataclass(frozen=True)
class Problem:
  tables: dict[tuple[int, int], BlockTable]
  fixed: cost.Cost  # stem and classifier
  resolution: int
  convention: str
  unused: tuple[tuple[int, int], ...] = ()  # rank files no rated chain reaches

  def table(self, block: int, in_scale: int) -> BlockTable:
    return self.tables[(block, in_scale)]

  def in_scales(self, block: int) -> tuple[int, ...]:
    return tuple(sorted((s for b, s in self.tables if b == block), reverse=True))

  @property
  def num_architectures(self) -> int:
    counts = {ss.STEM_SCALE: 1}
    for b in range(ss.NUM_BLOCKS):
      nxt: dict[int, int] = {}
      for s, n in counts.items():
        for o in self.table(b, s).out_scales.tolist():
          nxt[o] = nxt.get(o, 0) + n
      counts = nxt
    return sum(counts.values())


def build_problem(scores: Mapping[tuple[int, int], Mapping[ss.Path, float]],
                  resolution: int = 224, convention: str = "true", *, workdir: str | None = None,
                  **bossnet_options) -> Problem:
  """Tables of the rated candidates of every (block, input scale) that a chain of rated candidates
  reaches. A reachable (block, scale) without scores is an error naming its rank file."""
  options = {"empty_stage_stride": EMPTY_STAGE_STRIDE, **bossnet_options}
  tables = {}
  reach = {ss.STEM_SCALE}
  for b in range(ss.NUM_BLOCKS):
    nxt = set()
    for s in sorted(reach, reverse=True):
      if (b, s) not in scores or not scores[(b, s)]:
        where = rt.rank_file_path(workdir, b, s) if workdir else f"(block {b}, input {s})"
        came = ("" if b == 0 else f" (rated candidates of block {b - 1} end at "
                f"{ss.SCALE_NAMES[s]}x{ss.SCALE_NAMES[s]})")
        raise SearchError(
            f"missing rank file {where}: block {b} has no ratings at input scale "
            f"{ss.SCALE_NAMES[s]}{came}. Let the main job finish rating block {b} at every input "
            "scale its predecessor reaches (resume launch/train_blocks.py with this workdir).")
      items = sorted(scores[(b, s)].items(), key=lambda kv: (kv[1], kv[0]))
      paths = tuple(tuple(p) for p, _ in items)
      costs = [cost.searched_block_cost(b, s, p, resolution, convention, **options)
               for p in paths]
      outs = np.array([ss.output_scale(p) for p in paths], np.int64)
      tables[(b, s)] = BlockTable(
          b, s, paths, np.array([v for _, v in items], np.float64),
          np.array([c.madds for c in costs], np.int64),
          np.array([c.params for c in costs], np.int64), outs,
          {p: i for i, p in enumerate(paths)})
      nxt.update(outs.tolist())
    reach = nxt
  unused = tuple(sorted(k for k in scores if k not in tables))
  fixed = cost.searched_fixed_cost(resolution, convention, **options)
  return Problem(tables, fixed, resolution, convention, unused)


def average_ranks(v) -> np.ndarray:
  """Ranks 1..n, ties given the mean of the ranks they span."""
  v = np.asarray(v, np.float64)
  order = np.argsort(v, kind="stable")
  sorted_v = v[order]
  ranks = np.empty(len(v))
  i = 0
  while i < len(v):
    j = i
    while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  return ranks


def normalize_scores(scores: Mapping[tuple[int, int], Mapping[ss.Path, float]], how: str
                     ) -> dict[tuple[int, int], dict[ss.Path, float]]:
  """Block scores made comparable across the rank files of different (block, input scale).

  A block's candidates at one input scale are rated behind one frozen prefix and toward their own
  population centre, so the scores of two input scales have no common level (the prefix bias of
  docs/method.md#ranking-evaluation). 'zscore' subtracts each rank file's mean and divides by its
  standard deviation; 'rank' replaces each score by its average rank in its file over the file's
  length (0 best, 1 worst); 'none' keeps the raw losses (the official rule).
  """
  if how not in NORMALIZATIONS:
    raise SearchError(f"normalize={how!r}: expected one of {', '.join(NORMALIZATIONS)}.")
  out = {}
  for k, v in scores.items():
    paths, vals = list(v), np.array(list(v.values()), np.float64)
    if how == "zscore":
      # A file whose scores are all equal says nothing: 0 (its std would be rounding noise).
      vals = ((vals - vals.mean()) / vals.std() if np.ptp(vals) > 0 else np.zeros_like(vals))
    elif how == "rank":
      vals = (average_ranks(vals) - 1) / max(len(vals) - 1, 1)
    out[k] = dict(zip(paths, vals.tolist()))
  return out


def load_problem(workdir: str, settings: SearchSettings | None = None) -> Problem:
  settings = settings or SearchSettings()
  scores = normalize_scores(rt.read_ratings(workdir), settings.normalize)
  return build_problem(scores, settings.resolution, settings.convention, workdir=workdir)


# ------------------------------------------------------------------------------------------------
# Evaluating architectures.


@dataclasses.dataclass(frozen=True)
class Evaluated:
  architecture: ss.Architecture
  score: float
  block_scores: tuple[float, ...]
  cost: cost.Cost

  def key(self) -> tuple:
    """Order of preference: score, then MAdds, then params, then the string (deterministic)."""
    return (self.score, self.cost.madds, self.cost.params, str(self.architecture))


def total_score(values) -> float:
  """An architecture's score: its block scores added left to right from 0.0, as the dynamic
  programme adds, so equal chains give equal floats wherever they are summed."""
  total = 0.0
  for v in values:
    total += v
  return total


def evaluate(problem: Problem, arch: ss.Architecture | str) -> Evaluated:
  """Score and cost of an architecture from the rank files (an error if a block is not rated)."""
  if isinstance(arch, str):
    arch = ss.parse_architecture(arch)
  block_scores, total = [], problem.fixed
  for b, p in enumerate(arch.paths):
    s = arch.input_scale(b)
    t = problem.tables.get((b, s))
    i = t.index.get(tuple(p)) if t else None
    if i is None:
      raise SearchError(
          f"architecture {arch}: path {ss.format_path(p)} of block {b} at input "
          f"{ss.SCALE_NAMES[s]} has no rating, so it has no score.")
    block_scores.append(float(t.scores[i]))
    total = total + cost.Cost(int(t.madds[i]), int(t.params[i]))
  return Evaluated(arch, total_score(block_scores), tuple(block_scores), total)


def within(c: cost.Cost, settings: SearchSettings) -> bool:
  return ((settings.max_madds is None or c.madds <= settings.max_madds)
          and (settings.max_params is None or c.params <= settings.max_params))


# ------------------------------------------------------------------------------------------------
# Pareto sets.


def nondominated(points: np.ndarray) -> np.ndarray:
  """Indices of the rows of `points` (n, 3; every column minimised) that no other row weakly
  dominates; of equal rows the first is kept. Sorted by the first column.

  Rows are visited by (c0, c1, c2); a visited row can only be dominated by an earlier one, which
  is tested against a staircase of the (c1, c2) pairs kept so far (c1 ascending, c2 descending).
  """
  if len(points) == 0:
    return np.zeros(0, np.int64)
  order = np.lexsort((points[:, 2], points[:, 1], points[:, 0]))
  c1, c2 = points[order, 1].tolist(), points[order, 2].tolist()
  xs: list[float] = []
  ys: list[float] = []
  keep = []
  for k, (x, y) in enumerate(zip(c1, c2)):
    j = bisect.bisect_right(xs, x)
    if j and ys[j - 1] <= y:
      continue  # An earlier row is no worse anywhere.
    lo = j - 1 if j and xs[j - 1] == x else j
    hi = j
    while hi < len(ys) and ys[hi] >= y:
      hi += 1
    xs[lo:hi] = [x]
    ys[lo:hi] = [y]
    keep.append(k)
  return order[np.array(keep, np.int64)]


@dataclasses.dataclass(frozen=True)
class _Chains:
  """A Pareto set of chains of blocks 0..b ending at one scale, as back-pointers."""

  points: np.ndarray  # (n, 3): score, MAdds, params (fixed part included)
  src: np.ndarray     # input scale of block b's table
  parent: np.ndarray  # row in the chains of block b-1 ending at `src`
  cand: np.ndarray    # candidate index in table (b, src)


def _forward_fronts(problem: Problem) -> list[dict[int, _Chains]]:
  """Per block, per output scale: the chains of blocks 0..b that no other chain ending at the same
  scale beats in (score, MAdds, params). A dominated chain stays dominated whatever follows, since
  everything adds up, so nothing optimal is dropped."""
  root = np.array([[0.0, problem.fixed.madds, problem.fixed.params]])
  levels: list[dict[int, _Chains]] = []
  prev = {ss.STEM_SCALE: _Chains(root, np.zeros(1, np.int64), np.zeros(1, np.int64),
                                 np.zeros(1, np.int64))}
  for b in range(ss.NUM_BLOCKS):
    groups: dict[int, list] = {}
    for s, chains in prev.items():
      t = problem.table(b, s)
      cand = np.stack([t.scores, t.madds.astype(np.float64), t.params.astype(np.float64)], 1)
      n, m = len(chains.points), len(t.paths)
      pts = (chains.points[:, None, :] + cand[None, :, :]).reshape(-1, 3)
      parent = np.repeat(np.arange(n), m)
      ci = np.tile(np.arange(m), n)
      outs = t.out_scales[ci]
      for o in np.unique(outs).tolist():
        sel = outs == o
        groups.setdefault(o, []).append((pts[sel], np.full(sel.sum(), s), parent[sel], ci[sel]))
    level = {}
    for o, parts in groups.items():
      pts, src, parent, ci = (np.concatenate(x) for x in zip(*parts))
      keep = nondominated(pts)
      level[o] = _Chains(pts[keep], src[keep], parent[keep], ci[keep])
    levels.append(level)
    prev = level
  return levels


def _trace(problem: Problem, levels: list[dict[int, _Chains]], scale: int,
           row: int) -> ss.Architecture:
  paths = []
  for b in range(ss.NUM_BLOCKS - 1, -1, -1):
    ch = levels[b][scale]
    s = int(ch.src[row])
    paths.append(problem.table(b, s).paths[int(ch.cand[row])])
    scale, row = s, int(ch.parent[row])
  return ss.Architecture(tuple(reversed(paths)))


def pareto_front(problem: Problem) -> tuple[Evaluated, ...]:
  """The exact Pareto front of (score, MAdds, params) over every rated architecture, best score
  first; of architectures equal in all three, one."""
  levels = _forward_fronts(problem)
  last = levels[-1]
  rows = [(o, i) for o, ch in last.items() for i in range(len(ch.points))]
  pts = np.concatenate([last[o].points for o in last])
  front = [evaluate(problem, _trace(problem, levels, *rows[i])) for i in nondominated(pts)]
  return tuple(sorted(front, key=Evaluated.key))


def best_within(front, settings: SearchSettings) -> Evaluated | None:
  ok = [e for e in front if within(e.cost, settings)]
  return min(ok, key=Evaluated.key) if ok else None


# ------------------------------------------------------------------------------------------------
# Budgets: the cheapest completions of partial chains.


def _suffix_fronts(problem: Problem) -> dict[tuple[int, int], np.ndarray]:
  """For block b taking input at scale s: the Pareto set of (MAdds, params) over every way of
  finishing the network from there (blocks b..3). A partial chain can still meet the budgets iff
  one of these fits in what is left."""
  out: dict[tuple[int, int], np.ndarray] = {}
  for b in range(ss.NUM_BLOCKS - 1, -1, -1):
    for s in problem.in_scales(b):
      t = problem.table(b, s)
      parts = []
      for i in range(len(t.paths)):
        rest = (np.zeros((1, 2)) if b == ss.NUM_BLOCKS - 1
                else out[(b + 1, int(t.out_scales[i]))])
        parts.append(rest + np.array([[t.madds[i], t.params[i]]], np.float64))
      pts = np.concatenate(parts)
      pts3 = np.concatenate([np.zeros((len(pts), 1)), pts], 1)
      out[(b, s)] = pts[nondominated(pts3)]
  return out


class _Budget:
  """Answers "can a chain that has spent `used` so far and continues with block b at scale s still
  meet the budgets?" exactly, from the suffix fronts."""

  def __init__(self, problem: Problem, settings: SearchSettings):
    self.problem = problem
    self.max_m = math.inf if settings.max_madds is None else float(settings.max_madds)
    self.max_p = math.inf if settings.max_params is None else float(settings.max_params)
    self.suffix = _suffix_fronts(problem)

  def open(self, block: int, scale: int, madds: float, params: float) -> bool:
    if block == ss.NUM_BLOCKS:
      return madds <= self.max_m and params <= self.max_p
    rest = self.suffix[(block, scale)]
    return bool(np.any((madds + rest[:, 0] <= self.max_m) & (params + rest[:, 1] <= self.max_p)))

  def feasible_candidates(self, block: int, scale: int, madds: float,
                          params: float) -> np.ndarray:
    """Candidate indices of table (block, scale) after which the chain can still be finished."""
    t = self.problem.table(block, scale)
    if self.max_m == math.inf and self.max_p == math.inf:
      return np.arange(len(t.paths))
    return np.array([i for i in range(len(t.paths))
                     if self.open(block + 1, int(t.out_scales[i]), madds + t.madds[i],
                                  params + t.params[i])], np.int64)

  def minima(self) -> tuple[int, int]:
    rest = self.suffix[(0, ss.STEM_SCALE)]
    return (int(rest[:, 0].min()) + self.problem.fixed.madds,
            int(rest[:, 1].min()) + self.problem.fixed.params)


def check_budget(problem: Problem, settings: SearchSettings) -> _Budget:
  """An error if no rated architecture meets the budgets, with the smallest costs reachable."""
  budget = _Budget(problem, settings)
  if not budget.open(0, ss.STEM_SCALE, problem.fixed.madds, problem.fixed.params):
    m, p = budget.minima()
    both = ""
    if (settings.max_madds is None or m <= settings.max_madds) and (
        settings.max_params is None or p <= settings.max_params):
      both = " Each bound alone can be met, but no architecture meets both at once."
    raise SearchError(
        f"no architecture meets the budget {settings.describe_budget()}: the smallest MAdds any "
        f"architecture reaches is {m:,} ({m / 1e9:.3f}G) and the smallest params {p:,} "
        f"({p / 1e6:.2f}M), in the {settings.convention} convention at {settings.resolution}."
        f"{both} Raise --max_madds / --max_params.")
  return budget


# ------------------------------------------------------------------------------------------------
# Strategies.


def greedy(problem: Problem) -> Evaluated:
  """The official rule (docs/method.md#search): per block the best-scored candidate at the scale
  where the chosen previous block ends."""
  paths, s = [], ss.STEM_SCALE
  for b in range(ss.NUM_BLOCKS):
    t = problem.table(b, s)
    i = int(np.argmin(t.scores))  # Tables are sorted by (score, path): ties go to the first.
    paths.append(t.paths[i])
    s = int(t.out_scales[i])
  return evaluate(problem, ss.Architecture(tuple(paths)))


class _Evolution:
  """(mu + lambda) evolution over valid chains under the budgets."""

  def __init__(self, problem: Problem, settings: SearchSettings, budget: _Budget):
    self.problem, self.settings, self.budget = problem, settings, budget
    self.rng = np.random.default_rng(settings.seed)
    self.cache: dict[tuple[ss.Path, ...], Evaluated] = {}
    self.members: set[tuple[ss.Path, ...]] = set()  # Every chain that entered a population.

  def eval(self, paths: tuple[ss.Path, ...]) -> Evaluated:
    if paths not in self.cache:
      self.cache[paths] = evaluate(self.problem, ss.Architecture(paths))
    return self.cache[paths]

  def _build(self, old: tuple[ss.Path, ...] | None, change: set[int]) -> tuple[ss.Path, ...]:
    """A chain that keeps the blocks of `old` not in `change` where they still fit and redraws the
    rest uniformly among candidates after which the budgets can still be met."""
    paths, s = [], ss.STEM_SCALE
    m, p = float(self.problem.fixed.madds), float(self.problem.fixed.params)
    for b in range(ss.NUM_BLOCKS):
      t = self.problem.table(b, s)
      ok = self.budget.feasible_candidates(b, s, m, p)
      keep = t.index.get(old[b]) if old is not None else None
      if keep is not None and b not in change and keep in ok:
        i = keep
      else:
        pool = ok[ok != keep] if keep is not None and len(ok) > 1 else ok
        i = int(self.rng.choice(pool))
      paths.append(t.paths[i])
      s = int(t.out_scales[i])
      m, p = m + t.madds[i], p + t.params[i]
    return tuple(paths)

  def mutate(self, paths: tuple[ss.Path, ...], force: bool = True) -> tuple[ss.Path, ...]:
    change = {b for b in range(ss.NUM_BLOCKS) if self.rng.random() < self.settings.mutation_prob}
    if not change and force:
      change = {int(self.rng.integers(ss.NUM_BLOCKS))}
    return self._build(paths, change) if change else paths

  def crossover(self, a: tuple[ss.Path, ...], b: tuple[ss.Path, ...]):
    """A child taking blocks < k from one parent and >= k from the other, at a k where both
    parents feed block k at the same scale; None if no such child meets the budgets."""
    kids = []
    for k in range(1, ss.NUM_BLOCKS):
      if ss.output_scale(a[k - 1]) == ss.output_scale(b[k - 1]):
        kids += [a[:k] + b[k:], b[:k] + a[k:]]
    kids = [c for c in kids if c not in (a, b) and within(self.eval(c).cost, self.settings)]
    return kids[int(self.rng.integers(len(kids)))] if kids else None

  def select(self, population: list[tuple[ss.Path, ...]]) -> tuple[ss.Path, ...]:
    k = min(self.settings.tournament, len(population))
    picks = self.rng.choice(len(population), size=k, replace=False)
    return min((population[i] for i in picks), key=lambda c: self.eval(c).key())

  def run(self) -> Evaluated:
    size = self.settings.population
    population: list[tuple[ss.Path, ...]] = []
    for _ in range(20 * size):  # A small space may hold fewer distinct chains than `size`.
      c = self._build(None, set(range(ss.NUM_BLOCKS)))
      if c not in population:
        population.append(c)
      if len(population) == size:
        break
    self.members.update(population)
    for _ in range(self.settings.generations):
      children = []
      for _ in range(size):
        a = self.select(population)
        child = None
        if self.rng.random() < self.settings.crossover_prob:
          child = self.crossover(a, self.select(population))
        child = self.mutate(a) if child is None else self.mutate(child, force=False)
        children.append(child)
      self.members.update(children)
      pool = list(dict.fromkeys(population + children))
      population = sorted(pool, key=lambda c: self.eval(c).key())[:size]
    return self.eval(population[0])


# ------------------------------------------------------------------------------------------------
# Entry point.


@dataclasses.dataclass(frozen=True)
class SearchResult:
  chosen: Evaluated
  settings: SearchSettings
  front: tuple[Evaluated, ...]   # exact Pareto front of (score, MAdds, params), best score first
  optimum: Evaluated | None      # exact best architecture under the budgets
  num_architectures: int         # rated architectures in the space
  evaluated: int                 # architectures the strategy scored
  within_budget: bool
  notes: tuple[str, ...] = ()

  @property
  def architecture(self) -> ss.Architecture:
    return self.chosen.architecture


def search(problem: Problem, settings: SearchSettings) -> SearchResult:
  """Runs a strategy, and the exact Pareto front alongside (it is cheap) to certify the result."""
  budget = check_budget(problem, settings)
  front = pareto_front(problem)
  optimum = best_within(front, settings)
  notes = []
  if settings.strategy == "greedy":  # (Never with a budget: SearchSettings refuses it.)
    chosen, evaluated = greedy(problem), ss.NUM_BLOCKS
  elif settings.strategy == "exhaustive":
    chosen, evaluated = optimum, problem.num_architectures
  else:
    evo = _Evolution(problem, settings, budget)
    chosen = evo.run()
    evaluated = len(evo.cache)
    if optimum is not None and chosen.key() != optimum.key():
      notes.append(f"evolution missed the exact optimum {optimum.architecture} "
                   f"(score {optimum.score:.4f}); try --strategy exhaustive")
  if problem.unused:
    notes.append("rank files no rated chain reaches were ignored: " + ", ".join(
        rt.rank_file_name(b, s) for b, s in problem.unused))
  return SearchResult(chosen, settings, front, optimum, problem.num_architectures, evaluated,
                      within(chosen.cost, settings), tuple(notes))


def run_search(workdir: str, config_or_args=None, **overrides) -> tuple[SearchResult, Problem]:
  """Reads the rank files of `workdir` and searches them with the given settings."""
  settings = settings_from(config_or_args, **overrides)  # Bad settings fail before any reading.
  problem = load_problem(workdir, settings)
  return search(problem, settings), problem
