"""Search strategies over the problem of `problem.py` (docs/method.md#search, #d9):

* ``exhaustive``: the exact Pareto front of (score, MAdds, params), by dynamic programming over
  blocks that keeps, per output scale, the chains no other chain beats on all three. Any best
  architecture under budgets is on that front, so the choice is certified optimal.
* ``evolution``: the paper's evolutionary search: tournament selection, crossover at blocks where
  both parents change scale alike, per-block mutation; every child is a valid chain under the
  budgets (partial chains are only extended where some completion still fits).
* ``greedy``: the official rule: block by block the best-scored candidate, the next block from its
  output scale. It cannot respect a budget, so a budget with it is refused.
"""

from __future__ import annotations

import bisect
import dataclasses
import math

import numpy as np

from bossnas_jax import search_space as ss
from bossnas_jax.rating import rank_files as rt
from bossnas_jax.search import problem as sp

# ------------------------------------------------------------------------------------------------
# Pareto sets.


def nondominated(points: np.ndarray) -> np.ndarray:
  """Indices of the rows of `points` (n, k >= 3; every column minimised) that no other row weakly
  dominates; of equal rows the first is kept. Sorted by the first column.

  Rows are visited in lexicographic order; a visited row can only be dominated by an earlier one.
  With 3 columns that is tested against a staircase of the (c1, c2) pairs kept so far (c1
  ascending, c2 descending); with more (latency as a third cost), against every kept row.
  """
  if len(points) == 0:
    return np.zeros(0, np.int64)
  if points.shape[1] > 3:
    order = np.lexsort(points.T[::-1])
    kept = np.empty((0, points.shape[1]))
    keep = []
    for k, row in enumerate(points[order]):
      if not np.any(np.all(kept <= row, axis=1)):
        kept = np.vstack([kept, row])
        keep.append(k)
    return order[np.array(keep, np.int64)]
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

  points: np.ndarray  # (n, 3 or 4): score, MAdds, params[, latency] (fixed part included)
  src: np.ndarray     # input scale of block b's table
  parent: np.ndarray  # row in the chains of block b-1 ending at `src`
  cand: np.ndarray    # candidate index in table (b, src)


def _forward_fronts(problem: sp.Problem) -> list[dict[int, _Chains]]:
  """Per block, per output scale: the chains of blocks 0..b that no other chain ending at the same
  scale beats in (score, MAdds, params). A dominated chain stays dominated whatever follows, since
  everything adds up, so nothing optimal is dropped."""
  root = np.array([[0.0, problem.fixed.madds, problem.fixed.params]
                   + ([] if problem.fixed_latency is None else [problem.fixed_latency])])
  k = root.shape[1]
  levels: list[dict[int, _Chains]] = []
  prev = {ss.STEM_SCALE: _Chains(root, np.zeros(1, np.int64), np.zeros(1, np.int64),
                                 np.zeros(1, np.int64))}
  for b in range(ss.NUM_BLOCKS):
    groups: dict[int, list] = {}
    for s, chains in prev.items():
      t = problem.table(b, s)
      cand = np.concatenate([t.scores[:, None], t.costs], 1)
      n, m = len(chains.points), len(t.paths)
      pts = (chains.points[:, None, :] + cand[None, :, :]).reshape(-1, k)
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


def _trace(problem: sp.Problem, levels: list[dict[int, _Chains]], scale: int,
           row: int) -> ss.Architecture:
  paths = []
  for b in range(ss.NUM_BLOCKS - 1, -1, -1):
    ch = levels[b][scale]
    s = int(ch.src[row])
    paths.append(problem.table(b, s).paths[int(ch.cand[row])])
    scale, row = s, int(ch.parent[row])
  return ss.Architecture(tuple(reversed(paths)))


def pareto_front(problem: sp.Problem) -> tuple[sp.Evaluated, ...]:
  """The exact Pareto front of (score, MAdds, params) over every rated architecture, best score
  first; of architectures equal in all three, one."""
  levels = _forward_fronts(problem)
  last = levels[-1]
  rows = [(o, i) for o, ch in last.items() for i in range(len(ch.points))]
  pts = np.concatenate([last[o].points for o in last])
  front = [sp.evaluate(problem, _trace(problem, levels, *rows[i])) for i in nondominated(pts)]
  return tuple(sorted(front, key=sp.Evaluated.key))


def best_within(front, settings: sp.SearchSettings) -> sp.Evaluated | None:
  ok = [e for e in front if sp.within(e, settings)]
  return min(ok, key=sp.Evaluated.key) if ok else None


# ------------------------------------------------------------------------------------------------
# Budgets: the cheapest completions of partial chains.


def _suffix_fronts(problem: sp.Problem) -> dict[tuple[int, int], np.ndarray]:
  """For block b taking input at scale s: the Pareto set of the costs (MAdds, params[, latency])
  over every way of finishing the network from there (blocks b..3). A partial chain can still meet
  the budgets iff one of these fits in what is left."""
  out: dict[tuple[int, int], np.ndarray] = {}
  k = problem.num_costs
  for b in range(ss.NUM_BLOCKS - 1, -1, -1):
    for s in problem.in_scales(b):
      t = problem.table(b, s)
      own = t.costs
      parts = []
      for i in range(len(t.paths)):
        rest = (np.zeros((1, k)) if b == ss.NUM_BLOCKS - 1
                else out[(b + 1, int(t.out_scales[i]))])
        parts.append(rest + own[i][None, :])
      pts = np.concatenate(parts)
      pts3 = np.concatenate([np.zeros((len(pts), 1)), pts], 1)
      out[(b, s)] = pts[nondominated(pts3)]
  return out


class _Budget:
  """Answers "can a chain that has spent `used` (MAdds, params[, latency]) so far and continues
  with block b at scale s still meet the budgets?" exactly, from the suffix fronts."""

  def __init__(self, problem: sp.Problem, settings: sp.SearchSettings):
    self.problem = problem
    limits = [settings.max_madds, settings.max_params]
    if problem.num_costs == 3:
      limits.append(settings.max_latency_ms)
    self.limits = np.array([math.inf if v is None else float(v) for v in limits])
    self.suffix = _suffix_fronts(problem)

  def start(self) -> np.ndarray:
    """What every chain spends before its blocks: the stem and the head."""
    p = self.problem
    return np.array([p.fixed.madds, p.fixed.params]
                    + ([] if p.fixed_latency is None else [p.fixed_latency]), np.float64)

  def open(self, block: int, scale: int, used: np.ndarray) -> bool:
    if block == ss.NUM_BLOCKS:
      return bool(np.all(used <= self.limits))
    rest = self.suffix[(block, scale)]
    return bool(np.any(np.all(used + rest <= self.limits, axis=1)))

  def feasible_candidates(self, block: int, scale: int, used: np.ndarray) -> np.ndarray:
    """Candidate indices of table (block, scale) after which the chain can still be finished."""
    t = self.problem.table(block, scale)
    if np.all(np.isinf(self.limits)):
      return np.arange(len(t.paths))
    own = t.costs
    return np.array([i for i in range(len(t.paths))
                     if self.open(block + 1, int(t.out_scales[i]), used + own[i])], np.int64)

  def minima(self) -> np.ndarray:
    """The smallest MAdds, params[, latency] any architecture reaches (each on its own)."""
    return self.suffix[(0, ss.STEM_SCALE)].min(axis=0) + self.start()


def check_budget(problem: sp.Problem, settings: sp.SearchSettings) -> _Budget:
  """An error if no rated architecture meets the budgets, with the smallest costs reachable."""
  budget = _Budget(problem, settings)
  if not budget.open(0, ss.STEM_SCALE, budget.start()):
    low = budget.minima()
    m, p = int(low[0]), int(low[1])
    both = ""
    if np.all(low <= budget.limits):
      both = (" Each bound alone can be met, but no architecture meets "
              + ("both" if len(low) == 2 else "them all") + " at once.")
    lat = (f", and the lowest predicted latency {low[2]:.3f} ms" if len(low) == 3 else "")
    raise sp.SearchError(
        f"no architecture meets the budget {settings.describe_budget()}: the smallest MAdds any "
        f"architecture reaches is {m:,} ({m / 1e9:.3f}G) and the smallest params {p:,} "
        f"({p / 1e6:.2f}M), in the {settings.convention} convention at {settings.resolution}"
        f"{lat}.{both} Raise --max_madds / --max_params"
        + (" / --max_latency_ms." if len(low) == 3 else "."))
  return budget


# ------------------------------------------------------------------------------------------------
# Strategies.


def greedy(problem: sp.Problem) -> sp.Evaluated:
  """The official rule (docs/method.md#search): per block the best-scored candidate at the scale
  where the chosen previous block ends."""
  paths, s = [], ss.STEM_SCALE
  for b in range(ss.NUM_BLOCKS):
    t = problem.table(b, s)
    i = int(np.argmin(t.scores))  # Tables are sorted by (score, path): ties go to the first.
    paths.append(t.paths[i])
    s = int(t.out_scales[i])
  return sp.evaluate(problem, ss.Architecture(tuple(paths)))


class _Evolution:
  """(mu + lambda) evolution over valid chains under the budgets."""

  def __init__(self, problem: sp.Problem, settings: sp.SearchSettings, budget: _Budget):
    self.problem, self.settings, self.budget = problem, settings, budget
    self.rng = np.random.default_rng(settings.seed)
    self.cache: dict[tuple[ss.Path, ...], sp.Evaluated] = {}
    self.members: set[tuple[ss.Path, ...]] = set()  # Every chain that entered a population.

  def eval(self, paths: tuple[ss.Path, ...]) -> sp.Evaluated:
    if paths not in self.cache:
      self.cache[paths] = sp.evaluate(self.problem, ss.Architecture(paths))
    return self.cache[paths]

  def _build(self, old: tuple[ss.Path, ...] | None, change: set[int]) -> tuple[ss.Path, ...]:
    """A chain that keeps the blocks of `old` not in `change` where they still fit and redraws the
    rest uniformly among candidates after which the budgets can still be met."""
    paths, s = [], ss.STEM_SCALE
    used = self.budget.start()
    for b in range(ss.NUM_BLOCKS):
      t = self.problem.table(b, s)
      ok = self.budget.feasible_candidates(b, s, used)
      keep = t.index.get(old[b]) if old is not None else None
      if keep is not None and b not in change and keep in ok:
        i = keep
      else:
        pool = ok[ok != keep] if keep is not None and len(ok) > 1 else ok
        i = int(self.rng.choice(pool))
      paths.append(t.paths[i])
      s = int(t.out_scales[i])
      used = used + t.costs[i]
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
    kids = [c for c in kids if c not in (a, b) and sp.within(self.eval(c), self.settings)]
    return kids[int(self.rng.integers(len(kids)))] if kids else None

  def select(self, population: list[tuple[ss.Path, ...]]) -> tuple[ss.Path, ...]:
    k = min(self.settings.tournament, len(population))
    picks = self.rng.choice(len(population), size=k, replace=False)
    return min((population[i] for i in picks), key=lambda c: self.eval(c).key())

  def run(self) -> sp.Evaluated:
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
  chosen: sp.Evaluated
  settings: sp.SearchSettings
  front: tuple[sp.Evaluated, ...]   # exact Pareto front of (score, MAdds, params), best score first
  optimum: sp.Evaluated | None      # exact best architecture under the budgets
  num_architectures: int         # rated architectures in the space
  evaluated: int                 # architectures the strategy scored
  within_budget: bool
  notes: tuple[str, ...] = ()
  latency_header: dict | None = None  # the latency table's, when latency was a cost

  @property
  def architecture(self) -> ss.Architecture:
    return self.chosen.architecture


def search(problem: sp.Problem, settings: sp.SearchSettings) -> SearchResult:
  """Runs a strategy, and the exact Pareto front alongside (it is cheap) to certify the result."""
  budget = check_budget(problem, settings)
  front = pareto_front(problem)
  optimum = best_within(front, settings)
  notes = []
  if settings.strategy == "greedy":  # (Never with a budget: sp.SearchSettings refuses it.)
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
                      sp.within(chosen, settings), tuple(notes), problem.latency_header)


def run_search(workdir: str, config_or_args=None, **overrides) -> tuple[SearchResult, sp.Problem]:
  """Reads the rank files of `workdir` and searches them with the given settings."""
  settings = sp.settings_from(config_or_args, **overrides)  # Bad settings fail before any reading.
  problem = sp.load_problem(workdir, settings)
  return search(problem, settings), problem
