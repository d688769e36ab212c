"""The search problem (docs/method.md#search, #search-and-export, #d9): settings, and the rated
candidates of every (block, input scale) with their score and cost.

An architecture is one rated candidate per block with chaining scales (block b+1 takes its input
at the scale where block b's path ends). Its score is the sum of its blocks' scores from the rank
files (lower is better; the official MBConv/NATS ranking rule, docs/method.md#ranking-evaluation)
and its cost is that of its final BossNet at the target resolution (`models/cost.py`; the true
convention unless told otherwise).

Both add up over blocks: a block's score is read at its input scale, and a searched BossNet's cost
is a fixed stem/head part plus one term per (block, input scale, path)
(`cost.searched_block_cost`). So the whole space (1.6M architectures at full size) is searched
through small per-(block, scale) tables instead of by building networks (`strategies.py`).

Searched architectures are costed as the BossNets they become (`bossnet_spec.SEARCHED_OPTIONS`):
every stage at its own stride, since a path starting at 28x28 leaves BossNet's stage 1 empty, and
the official layout would then run every later stage at half the scale the search chose.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

import numpy as np

from bossnas_jax import search_space as ss
from bossnas_jax.infra import errors
from bossnas_jax.models import cost, latency
from bossnas_jax.rating import rank_files as rt

STRATEGIES = ("evolution", "exhaustive", "greedy")
# How block scores are made comparable before they are added (see `normalize_scores`).
NORMALIZATIONS = ("none", "zscore", "rank")


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
  # Latency as a third cost (docs/method.md#latency): a table measured at this batch and dtype.
  latency_table: str | None = None
  max_latency_ms: float | None = None  # Budget on the predicted latency; needs latency_table.
  latency_batch: int = 1
  latency_dtype: str = "float32"

  def __post_init__(self):
    def bad(field, allowed):
      raise SearchError(f"search setting {field}={getattr(self, field)!r}: {allowed}.")

    if self.strategy not in STRATEGIES:
      bad("strategy", f"expected one of {', '.join(STRATEGIES)}")
    if self.convention not in cost.CONVENTIONS:
      bad("convention", f"expected one of {', '.join(cost.CONVENTIONS)}")
    if self.normalize not in NORMALIZATIONS:
      bad("normalize", f"expected one of {', '.join(NORMALIZATIONS)}")
    for f in ("max_madds", "max_params", "max_latency_ms"):
      v = getattr(self, f)
      if v is not None and not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
        bad(f, "a positive number, or None for no budget")
    if self.max_latency_ms and not self.latency_table:
      raise SearchError(
          f"max_latency_ms={self.max_latency_ms:g} needs a latency table: build one with "
          "launch/latency_table.py on the target device and pass it as latency_table "
          "(--latency_table).")
    if self.strategy == "greedy" and (self.max_madds or self.max_params or self.max_latency_ms):
      raise SearchError(
          "strategy='greedy' is the official rule and cannot respect a budget "
          f"({self.describe_budget()}); search under a budget with strategy 'exhaustive' (exact) "
          "or 'evolution', or drop the budget for the greedy choice.")
    if not ss.valid_resolution(self.resolution):
      bad("resolution", f"a positive multiple of {ss.RESOLUTION_MULTIPLE} such as 224 or 256")
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
             f"params <= {self.max_params:.4g}" if self.max_params else "",
             f"latency <= {self.max_latency_ms:g} ms" if self.max_latency_ms else ""]
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
  latency: np.ndarray | None = None  # float64 ms of the parts, with a latency table

  @functools.cached_property
  def costs(self) -> np.ndarray:
    """(n, 2 or 3) float64: each candidate's MAdds, params[, latency], as the search adds them."""
    cols = [self.madds.astype(np.float64), self.params.astype(np.float64)]
    return np.stack(cols + ([] if self.latency is None else [self.latency]), 1)


@dataclasses.dataclass(frozen=True)
class Problem:
  tables: dict[tuple[int, int], BlockTable]
  fixed: cost.Cost  # stem and classifier
  resolution: int
  convention: str
  unused: tuple[tuple[int, int], ...] = ()  # rank files no rated chain reaches
  fixed_latency: float | None = None  # stem and head (ms), with a latency table
  latency_header: dict | None = None   # what the table was measured on

  @property
  def num_costs(self) -> int:
    """MAdds and params, and latency with a table: the costs the search weighs."""
    return 2 if self.fixed_latency is None else 3

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
                  latency_table: Mapping | None = None, latency_path: str = "the latency table",
                  **bossnet_options) -> Problem:
  """Tables of the rated candidates of every (block, input scale) that a chain of rated candidates
  reaches. A reachable (block, scale) without scores is an error naming its rank file. With a
  `latency_table`, every candidate also has its part's latency (a missing entry is named)."""
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
      costs = [cost.searched_block_cost(b, s, p, resolution, convention, **bossnet_options)
               for p in paths]
      outs = np.array([ss.output_scale(p) for p in paths], np.int64)
      lat = None if latency_table is None else np.array(
          [latency.entry_ms(latency_table, latency.entry_name(b, s, p), latency_path)
           for p in paths], np.float64)
      tables[(b, s)] = BlockTable(
          b, s, paths, np.array([v for _, v in items], np.float64),
          np.array([c.madds for c in costs], np.int64),
          np.array([c.params for c in costs], np.int64), outs,
          {p: i for i, p in enumerate(paths)}, lat)
      nxt.update(outs.tolist())
    reach = nxt
  unused = tuple(sorted(k for k in scores if k not in tables))
  fixed = cost.searched_fixed_cost(resolution, convention, **bossnet_options)
  if latency_table is None:
    return Problem(tables, fixed, resolution, convention, unused)
  return Problem(tables, fixed, resolution, convention, unused,
                 latency.fixed_ms(latency_table, latency_path),
                 dict(latency_table.get("header", {})))


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
  table = None
  if settings.latency_table:
    table = latency.load_table(settings.latency_table)
    latency.check_settings(table["header"], latency.TableSettings(
        resolution=settings.resolution, batch=settings.latency_batch,
        dtype=settings.latency_dtype), settings.latency_table)
  return build_problem(scores, settings.resolution, settings.convention, workdir=workdir,
                       latency_table=table, latency_path=settings.latency_table or "")


# ------------------------------------------------------------------------------------------------
# Evaluating architectures.


@dataclasses.dataclass(frozen=True)
class Evaluated:
  architecture: ss.Architecture
  score: float
  block_scores: tuple[float, ...]
  cost: cost.Cost
  latency_ms: float | None = None  # predicted, with a latency table

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
  block_scores, total, ms = [], problem.fixed, problem.fixed_latency
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
    if ms is not None:  # Added block by block from the stem and head, as the search adds.
      ms = ms + float(t.latency[i])
  return Evaluated(arch, total_score(block_scores), tuple(block_scores), total, ms)


def within(e: Evaluated, settings: SearchSettings) -> bool:
  """Whether an architecture meets every budget of `settings`."""
  c = e.cost
  return ((settings.max_madds is None or c.madds <= settings.max_madds)
          and (settings.max_params is None or c.params <= settings.max_params)
          and (settings.max_latency_ms is None or e.latency_ms is None
               or e.latency_ms <= settings.max_latency_ms))
