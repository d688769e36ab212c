"""Rank files: the per-(block, input scale) candidate scores that the rating writes and the search
reads (docs/method.md#rating-design, #search-and-export).

One JSON file per (block, input scale) at ``WORKDIR/ratings/block{b}_in{scale_name}.json``
(scale_name from `search_space.SCALE_NAMES`, e.g. ``block1_in14.json``)::

  {"block": 1, "in_scale": 1, "prefix": "5433", "rating_index": 2, "epoch": 6,
   "num_images": 10000,
   "candidates": [{"path": "3230", "score": -3.2101, "out_scale": 0, "madds": ..., "params": ...},
                  ...]}

`prefix` is the frozen chain the block was rated on ('' for block 0, else one path per earlier
block, '-'-separated, ending at `in_scale`). Candidates are sorted by score, lowest (best) first;
`madds` / `params` are those of the supernet path (`cost.path_cost`), for reading only.

Beside them: ``ratings/history/block{b}_in{scale}_epoch{e}.json``, a copy of every rating as it
was written after epoch e of block training (how early the ranking settles), and
``ratings/partial/``, the progress of a rating that has not finished (population_centre.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence

from bossnas_jax import search_space as ss
from bossnas_jax.infra import errors, files
from bossnas_jax.models import cost

RATINGS_DIR = "ratings"
HISTORY_DIR = "history"
PARTIAL_DIR = "partial"
_NAME = re.compile(r"^block(\d+)_in(\d+)\.json$")
_HISTORY_NAME = re.compile(r"^block(\d+)_in(\d+)_epoch(\d+)\.json$")

Scores = dict[ss.Path, float]


class RatingsError(errors.UserError, ValueError):
  """A missing, malformed or inconsistent rank file; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class RankFile:
  block: int
  in_scale: int
  prefix: str
  scores: Scores  # path -> score, lowest first
  rating_index: int | None = None
  epoch: int | None = None
  num_images: int | None = None
  path: str = ""


def ratings_dir(workdir: str) -> str:
  return os.path.join(workdir, RATINGS_DIR)


def key_name(block: int, in_scale: int) -> str:
  """'block1_in14': how files and folders of one (block, input scale) are named."""
  return f"block{block}_in{ss.SCALE_NAMES[in_scale]}"


def rank_file_name(block: int, in_scale: int) -> str:
  return f"{key_name(block, in_scale)}.json"


def history_path(workdir: str, block: int, in_scale: int, epoch: int) -> str:
  return os.path.join(ratings_dir(workdir), HISTORY_DIR,
                      f"{key_name(block, in_scale)}_epoch{int(epoch)}.json")


def history(workdir: str) -> dict[tuple[int, int], dict[int, str]]:
  """{(block, in_scale): {epoch: path}} of every rating kept under ratings/history/."""
  folder = os.path.join(ratings_dir(workdir), HISTORY_DIR)
  out: dict[tuple[int, int], dict[int, str]] = {}
  for name in files.listdir(folder) if files.isdir(folder) else []:
    m = _HISTORY_NAME.match(name)
    if m and m.group(2) in ss.SCALE_NAMES:
      key = (int(m.group(1)), ss.SCALE_NAMES.index(m.group(2)))
      out.setdefault(key, {})[int(m.group(3))] = os.path.join(folder, name)
  return out


def progress_path(workdir: str, block: int, in_scale: int) -> str:
  """The stem of an unfinished rating's progress files (`.json` and its sums)."""
  return os.path.join(ratings_dir(workdir), PARTIAL_DIR, key_name(block, in_scale))


def rank_file_path(workdir: str, block: int, in_scale: int) -> str:
  return os.path.join(ratings_dir(workdir), rank_file_name(block, in_scale))


def format_prefix(prefix: str | Sequence[Sequence[int]] | ss.Architecture) -> str:
  """'' / '5433' / '5433-3230' from a string, a sequence of paths or an Architecture."""
  if isinstance(prefix, ss.Architecture):
    prefix = prefix.paths
  if isinstance(prefix, str):
    return prefix.strip()
  return ss.format_architecture(prefix)


def check_prefix(prefix: str, block: int, in_scale: int) -> None:
  """The prefix must hold one valid path per earlier block, chained from the stem to `in_scale`."""
  parts = prefix.split("-") if prefix else []
  if len(parts) != block:
    raise ss.SearchSpaceError(
        f"prefix {prefix!r}: block {block} is rated behind {block} earlier block path(s) "
        f"('-'-separated, '' for block 0), found {len(parts)}.")
  scale = ss.STEM_SCALE
  for b, text in enumerate(parts):
    scale = ss.output_scale(ss.parse_path(text, b, scale))
  if parts and scale != in_scale:
    raise ss.SearchSpaceError(
        f"prefix {prefix!r} ends at scale {ss.SCALE_NAMES[scale]}, but the block is rated at "
        f"input scale {ss.SCALE_NAMES[in_scale]}.")


def _check_key(block, in_scale) -> None:
  if not isinstance(block, int) or not 0 <= block < ss.NUM_BLOCKS:
    raise ss.SearchSpaceError(f"block {block!r} must be an integer in 0..{ss.NUM_BLOCKS - 1}.")
  if not isinstance(in_scale, int) or in_scale not in ss.input_scales(block):
    names = ", ".join(f"{s} ({ss.SCALE_NAMES[s]})" for s in ss.input_scales(block))
    raise ss.SearchSpaceError(
        f"block {block} never takes input at scale {in_scale!r}; its input scales are {names}.")


def _check_score(path_text: str, score) -> float:
  if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
    raise ss.SearchSpaceError(f"candidate {path_text}: score {score!r} is not a finite number.")
  return float(score)


def write_rank_file(workdir: str, block: int, in_scale: int,
                    prefix: str | Sequence[Sequence[int]] | ss.Architecture,
                    scores: Mapping[Sequence[int], float], *, rating_index: int | None = None,
                    epoch: int | None = None, num_images: int | None = None,
                    dims: ss.Dims | None = None) -> str:
  """Validates and writes the rank file of (block, in_scale); returns its path.

  `scores` maps each rated path (a tuple of op indices) to its score (lower is better). Each
  candidate also records its supernet path's MAdds and params (`dims`: full size unless given).
  The file is replaced atomically, so a reader never sees half of it.
  """
  where = f"rank file of block {block} at input {in_scale!r}"
  try:
    _check_key(block, in_scale)
    prefix = format_prefix(prefix)
    check_prefix(prefix, block, in_scale)
    if not scores:
      raise ss.SearchSpaceError("no candidate scores given.")
    rows = []
    for path, score in scores.items():
      text = ss.format_path(path)
      p = ss.parse_path(text, block, in_scale)
      rows.append((_check_score(text, score), text, p))
  except ss.SearchSpaceError as e:
    raise RatingsError(f"{where}: {e}") from None
  dims = dims or ss.Dims()
  rows.sort(key=lambda r: (r[0], r[1]))
  candidates = []
  for score, text, p in rows:
    c = cost.path_cost(dims, block, in_scale, p)
    candidates.append({"path": text, "score": score, "out_scale": ss.output_scale(p),
                       "madds": c.madds, "params": c.params})
  record = {"block": block, "in_scale": in_scale, "prefix": prefix, "rating_index": rating_index,
            "epoch": epoch, "num_images": num_images, "candidates": candidates}
  return files.write_json(rank_file_path(workdir, block, in_scale), record, indent=1,
                          allow_nan=False)


def read_rank_file(path: str) -> RankFile:
  """Reads and validates one rank file; every problem is a RatingsError naming the file."""
  fix = "re-run the rating of that block, or delete the file if it does not belong here"
  try:
    record = files.read_json(path)
  except FileNotFoundError:
    raise RatingsError(f"rank file {path} does not exist.") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RatingsError(f"rank file {path} is not readable JSON ({e}); {fix}.") from None
  try:
    if not isinstance(record, dict):
      raise ss.SearchSpaceError("expected a JSON object.")
    missing = [k for k in ("block", "in_scale", "prefix", "candidates") if k not in record]
    if missing:
      raise ss.SearchSpaceError(f"missing field(s) {', '.join(missing)}.")
    block, in_scale = record["block"], record["in_scale"]
    _check_key(block, in_scale)
    m = _NAME.match(os.path.basename(path))
    if m and (int(m.group(1)), m.group(2)) != (block, ss.SCALE_NAMES[in_scale]):
      raise ss.SearchSpaceError(
          f"it holds block {block} at input {ss.SCALE_NAMES[in_scale]} but is named "
          f"{os.path.basename(path)} (expected {rank_file_name(block, in_scale)}).")
    if not isinstance(record["prefix"], str):
      raise ss.SearchSpaceError(f"prefix {record['prefix']!r} must be a string.")
    check_prefix(record["prefix"], block, in_scale)
    rows = record["candidates"]
    if not isinstance(rows, list) or not rows:
      raise ss.SearchSpaceError("'candidates' must be a non-empty list.")
    scores: Scores = {}
    for i, row in enumerate(rows):
      if not isinstance(row, dict) or "path" not in row or "score" not in row:
        raise ss.SearchSpaceError(f"candidate #{i} needs 'path' and 'score', found {row!r}.")
      p = ss.parse_path(row["path"], block, in_scale)
      if p in scores:
        raise ss.SearchSpaceError(f"candidate {row['path']} is listed twice.")
      if "out_scale" in row and row["out_scale"] != ss.output_scale(p):
        raise ss.SearchSpaceError(
            f"candidate {row['path']}: out_scale {row['out_scale']!r}, but the path ends at "
            f"scale {ss.output_scale(p)}.")
      scores[p] = _check_score(row["path"], row["score"])
  except ss.SearchSpaceError as e:
    raise RatingsError(f"rank file {path}: {e} Fix: {fix}.") from None
  scores = dict(sorted(scores.items(), key=lambda kv: (kv[1], kv[0])))
  return RankFile(block, in_scale, record["prefix"], scores, record.get("rating_index"),
                  record.get("epoch"), record.get("num_images"), path)


def read_rank_files(workdir: str) -> dict[tuple[int, int], RankFile]:
  """Every rank file of a workdir, keyed by (block, in_scale)."""
  if not files.isdir(workdir):
    raise RatingsError(
        f"workdir {workdir} does not exist; pass the --workdir of a BossNAS main job "
        "(launch/train_blocks.py), which holds ratings/.")
  folder = ratings_dir(workdir)
  names = [n for n in files.listdir(folder) if _NAME.match(n)]
  if not names:
    raise RatingsError(
        f"no rank files (block<b>_in<scale>.json) in {folder}; the main job writes them when it "
        "rates each block: run or resume launch/train_blocks.py with this workdir first.")
  out = {}
  for name in names:
    rf = read_rank_file(os.path.join(folder, name))
    out[(rf.block, rf.in_scale)] = rf
  return out


def read_ratings(workdir: str) -> dict[tuple[int, int], Scores]:
  """{(block, in_scale): {path: score}} from every rank file of a workdir, validated."""
  return {k: rf.scores for k, rf in read_rank_files(workdir).items()}
