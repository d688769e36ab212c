"""Every architecture of the space at once: rating any architecture from a main job's rank files.

`rate(workdir, archs)` gives, for each architecture, its per-block scores from the rank files,
its total score (the search's sum, lower is better), its exact rank among every rated
architecture of the space, and its MAdds and parameters in both cost conventions. The rank is
counted, not estimated: block scores add up, so `enumerate_architectures` lists the score of all
architectures (1.6M in the HyTra space) as numpy arrays in well under a second, summing block by
block in the order `problem.evaluate` does, so an architecture's score here equals the search's to
the bit and the exhaustive search's choice has rank 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from bossnas_jax import search_space as ss
from bossnas_jax.infra import errors, files
from bossnas_jax.models import cost
from bossnas_jax.rating import rank_files as rt
from bossnas_jax.search import architecture, export
from bossnas_jax.search import problem as sp


class RateError(errors.UserError, ValueError):
  """One architecture that cannot be rated: malformed, or a block without a rating."""


# ------------------------------------------------------------------------------------------------
# Every rated architecture at once.


@dataclasses.dataclass(frozen=True)
class Population:
  """All architectures of a search problem: row i is one chain of rated candidates."""

  problem: sp.Problem
  scores: np.ndarray      # (N,) float64, summed left to right from 0.0 as problem.evaluate
  madds: np.ndarray       # (N,) int64, the final BossNet's (problem's convention and resolution)
  params: np.ndarray      # (N,) int64
  candidates: np.ndarray  # (N, 4) int32: candidate index in the table of (block, input scale)
  in_scales: np.ndarray   # (N, 4) int8: input scale of each block

  def __len__(self) -> int:
    return len(self.scores)

  def architecture(self, i: int) -> ss.Architecture:
    return ss.Architecture(tuple(
        self.problem.table(b, int(self.in_scales[i, b])).paths[int(self.candidates[i, b])]
        for b in range(ss.NUM_BLOCKS)))

  def rank(self, score: float) -> tuple[int, int]:
    """(1 + number of architectures scoring strictly better, number scoring exactly `score`)."""
    return 1 + int(np.count_nonzero(self.scores < score)), int(
        np.count_nonzero(self.scores == score))

  def percentile(self, score: float) -> float:
    """Share of all architectures, in %, that score strictly worse than `score`."""
    return 100.0 * int(np.count_nonzero(self.scores > score)) / len(self)


def enumerate_architectures(problem: sp.Problem) -> Population:
  """Every chain of rated candidates with its score and cost, block by block (vectorised)."""
  fixed = problem.fixed
  groups = {ss.STEM_SCALE: (np.zeros(1), np.full(1, fixed.madds, np.int64),
                            np.full(1, fixed.params, np.int64), np.zeros((1, 0), np.int32),
                            np.zeros((1, 0), np.int8))}
  for b in range(ss.NUM_BLOCKS):
    nxt: dict[int, list] = {}
    for s, (score, madds, params, cand, scales) in groups.items():
      t = problem.table(b, s)
      n, m = len(score), len(t.paths)
      ci = np.tile(np.arange(m, dtype=np.int32), n)
      rows = np.repeat(np.arange(n), m)
      parts = ((score[:, None] + t.scores[None, :]).reshape(-1),
               (madds[:, None] + t.madds[None, :]).reshape(-1),
               (params[:, None] + t.params[None, :]).reshape(-1),
               np.concatenate([cand[rows], ci[:, None]], 1),
               np.concatenate([scales[rows], np.full((n * m, 1), s, np.int8)], 1))
      outs = t.out_scales[ci]
      for o in np.unique(outs).tolist():
        sel = outs == o
        nxt.setdefault(o, []).append(tuple(x[sel] for x in parts))
    groups = {o: tuple(np.concatenate(x) for x in zip(*v)) for o, v in nxt.items()}
  score, madds, params, cand, scales = (np.concatenate(x) for x in zip(*groups.values()))
  return Population(problem, score, madds, params, cand, scales)


# ------------------------------------------------------------------------------------------------
# Rating named architectures.


@dataclasses.dataclass(frozen=True)
class Rating:
  architecture: str
  block_scores: tuple[float, ...]
  score: float
  rank: int | None              # None when not every (block, input scale) of the run is rated
  num_architectures: int | None
  tied: int | None              # architectures with exactly this score (itself included)
  percentile: float | None      # % of all architectures that score strictly worse
  costs: dict[str, cost.Cost]   # per convention: the final BossNet at `resolution`
  resolution: int
  width_multiplier: float = 1.0

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["block_scores"] = list(self.block_scores)
    d["costs"] = {k: {"madds": c.madds, "params": c.params} for k, c in self.costs.items()}
    return d


@dataclasses.dataclass(frozen=True)
class RatedRun:
  """What `rate` needs of a main job's workdir, read once for many architectures."""

  workdir: str
  rank_files: dict[tuple[int, int], rt.RankFile]
  resolution: int
  population: Population | None
  missing: str  # why there is no population ('' when there is one)
  normalize: str = "none"  # the scores' normalisation (problem.normalize_scores)


def load_run(workdir: str, resolution: int | None = None, normalize: str | None = None
             ) -> RatedRun:
  """Reads the rank files of `workdir`; the whole population when every reachable (block, input
  scale) is rated. `resolution` and `normalize` default to the run's `search` settings
  (config.json), else 224 and 'none'."""
  rank_files = rt.read_rank_files(workdir)
  cfg_path = os.path.join(workdir, files.CONFIG_JSON)
  saved = (files.read_json(cfg_path) if files.exists(cfg_path) else {}).get("search", {})
  resolution = int(saved.get("resolution", 224)) if resolution is None else resolution
  normalize = (saved.get("normalize") or "none") if normalize is None else normalize
  scores = sp.normalize_scores({k: rf.scores for k, rf in rank_files.items()}, normalize)
  rank_files = {k: dataclasses.replace(rf, scores=scores[k]) for k, rf in rank_files.items()}
  try:
    problem = sp.build_problem(scores, resolution, workdir=workdir)
  except sp.SearchError as e:
    return RatedRun(workdir, rank_files, resolution, None, str(e), normalize)
  return RatedRun(workdir, rank_files, resolution, enumerate_architectures(problem), "",
                  normalize)


def rate_one(run: RatedRun, arch: ss.Architecture | str) -> Rating:
  """Scores, exact rank and costs of one architecture; a RateError names what is missing."""
  try:
    a = ss.parse_architecture(arch) if isinstance(arch, str) else arch
  except ss.SearchSpaceError as e:
    raise RateError(str(e)) from None
  block_scores = []
  for b, p in enumerate(a.paths):
    s = a.input_scale(b)
    rf = run.rank_files.get((b, s))
    where = f"architecture {a}: block {b} (path {ss.format_path(p)}) at input scale " \
            f"{ss.SCALE_NAMES[s]}x{ss.SCALE_NAMES[s]}"
    if rf is None:
      rated = sorted(sc for bb, sc in run.rank_files if bb == b)
      state = (f"block {b} is rated only at input "
               + ", ".join(f"{ss.SCALE_NAMES[x]}x{ss.SCALE_NAMES[x]}" for x in rated)
               if rated else f"block {b} is not rated yet")
      raise RateError(
          f"{where}: not rated: {rt.rank_file_path(run.workdir, b, s)} does not exist ({state}). "
          f"Let the main job rate block {b} (resume launch/train_blocks.py with this workdir).")
    if tuple(p) not in rf.scores:
      raise RateError(f"{where}: {rf.path} has no score for this path; re-run that rating.")
    block_scores.append(rf.scores[tuple(p)])
  score = sp.total_score(block_scores)
  costs = export.architecture_costs(a, run.resolution)
  pop = run.population
  if pop is None:
    return Rating(str(a), tuple(block_scores), score, None, None, None, None, costs,
                  run.resolution)
  rank, tied = pop.rank(score)
  return Rating(str(a), tuple(block_scores), score, rank, len(pop), tied, pop.percentile(score),
                costs, run.resolution)


def rate(workdir: str, archs: Sequence[ss.Architecture | str], resolution: int | None = None,
         normalize: str | None = None) -> tuple[RatedRun, list[Rating | RateError]]:
  """Rates every architecture; one that cannot be rated gives its RateError in its place."""
  run = load_run(workdir, resolution, normalize)
  out: list[Rating | RateError] = []
  for a in archs:
    try:
      out.append(rate_one(run, a))
    except RateError as e:
      out.append(e)
  return run, out


def read_architecture_list(path: str) -> list[str]:
  """Architecture strings from a file: an architecture.json, or one string per line ('#'
  comments and blank lines are skipped)."""
  try:
    text = files.read_text(path)
  except FileNotFoundError:
    raise RateError(f"--archs {path} does not exist.") from None
  except (OSError, UnicodeDecodeError) as e:
    raise RateError(f"--archs {path} is not a readable text file ({e}).") from None
  if text.lstrip().startswith("["):  # A JSON list of architecture strings.
    try:
      listed = json.loads(text)
    except ValueError as e:
      raise RateError(f"--archs {path} looks like JSON but does not parse ({e}).") from None
    if not all(isinstance(a, str) for a in listed):
      raise RateError(f"--archs {path}: a JSON list must hold architecture strings only.")
    if not listed:
      raise RateError(f"--archs {path} holds no architecture (an empty list).")
    return listed
  if text.lstrip().startswith("{"):
    try:
      json.loads(text)
    except ValueError as e:
      raise RateError(f"--archs {path} looks like JSON but does not parse ({e}).") from None
    try:
      return [str(architecture.load_architecture(path)[0])]
    except architecture.ArchitectureFileError as e:
      raise RateError(str(e)) from None
  archs = [line.split("#", 1)[0].strip() for line in text.splitlines()]
  archs = [a for a in archs if a]
  if not archs:
    raise RateError(f"--archs {path} holds no architecture (one string per line, or an "
                    "architecture.json).")
  return archs


def format_table(run: RatedRun, results: Sequence[Rating | RateError]) -> str:
  pop = run.population
  norm = "" if run.normalize == "none" else f" ({run.normalize}-normalised per rank file)"
  head = (f"{run.workdir}: {len(run.rank_files)} rank files{norm}; "
          + (f"{len(pop):,} rated architectures" if pop is not None
             else "no exact ranks (" + run.missing.split(". ")[0] + ")")
          + f"; costs of the full-width BossNet at {run.resolution}x{run.resolution} "
          "(true / official convention)")
  lines = [head, f"{'architecture':<20} {'block scores':<31} {'score':>9} {'rank':>19} "
           f"{'pctile':>8} {'MAdds (G)':>15} {'params (M)':>15}"]
  for r in results:
    if isinstance(r, RateError):
      lines.append(f"error: {r}")
      continue
    t, o = r.costs["true"], r.costs["official"]
    rank = f"{r.rank:,} of {r.num_architectures:,}" if r.rank is not None else "-"
    pct = f"{r.percentile:.4f}" if r.percentile is not None else "-"
    lines.append(f"{r.architecture:<20} {' '.join(f'{v:7.4f}' for v in r.block_scores):<31} "
                 f"{r.score:9.4f} {rank:>19} {pct:>8} "
                 f"{t.madds / 1e9:7.4f}/{o.madds / 1e9:7.4f} "
                 f"{t.params / 1e6:7.3f}/{o.params / 1e6:7.3f}")
  return "\n".join(lines)


def ratings_record(workdir: str, run: RatedRun, archs: Sequence[str],
                   results: Sequence[Rating | RateError]) -> dict:
  """What `launch/rate.py --json` writes: the run's settings and one entry per architecture."""
  return {"workdir": workdir, "resolution": run.resolution, "normalize": run.normalize,
          "num_architectures": len(run.population) if run.population is not None else None,
          "ratings": [r.to_dict() if isinstance(r, Rating) else
                      {"architecture": a if isinstance(a, str) else str(a), "error": str(r)}
                      for a, r in zip(archs, results)]}
