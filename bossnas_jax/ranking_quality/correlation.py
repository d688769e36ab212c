"""Rank correlation, ties handled as scipy.stats does (tau-b; average ranks as the search's
score normalisation): how well scores order networks by their real accuracy
(`benchmarks/ranking_quality.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from bossnas_jax.search import problem as sp


def _pair_signs(v: np.ndarray) -> np.ndarray:
  return np.sign(v[:, None] - v[None, :])


def _vectors(name: str, x, y) -> tuple[np.ndarray, np.ndarray]:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape or x.ndim != 1:
    raise ValueError(f"{name}: two equal-length vectors expected, got {x.shape}, {y.shape}")
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    raise ValueError(f"{name}: NaN or infinite values; drop or replace them first.")
  return x, y


def kendall_tau_b(x: Sequence[float], y: Sequence[float], pairs: np.ndarray | None = None
                  ) -> float:
  """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y)).

  `pairs` (an n x n boolean matrix, as `group_pairs` makes) counts only those pairs, e.g. the
  pairs of networks within one scale chain; NaN when none of them is untied."""
  x, y = _vectors("kendall_tau_b", x, y)
  sx, sy = _pair_signs(x), _pair_signs(y)
  iu = np.triu_indices(len(x), 1)
  sx, sy = sx[iu], sy[iu]
  if pairs is not None:
    keep = np.asarray(pairs, bool)[iu]
    sx, sy = sx[keep], sy[keep]
  denom = math.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy)))
  return float(np.sum(sx * sy) / denom) if denom else float("nan")


def group_pairs(groups: Sequence, within: bool) -> np.ndarray:
  """The pairs (i, j) whose groups are equal (`within`) or differ: an n x n boolean matrix."""
  keys = {g: k for k, g in enumerate(dict.fromkeys(groups))}
  g = np.array([keys[x] for x in groups])
  same = g[:, None] == g[None, :]
  return same if within else ~same


def partial_kendall_tau(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> float:
  """Kendall's partial tau of x and y given z (Kendall 1942):
  (t_xy - t_xz t_yz) / sqrt((1 - t_xz^2) (1 - t_yz^2)), what x says about y beyond what z says.
  Kendall defined it with tau-a; tau-b in its place is the usual extension to ties. The sign of z
  does not matter. NaN where z orders x or y completely (nothing is left)."""
  txy, txz, tyz = kendall_tau_b(x, y), kendall_tau_b(x, z), kendall_tau_b(y, z)
  denom = (1 - txz * txz) * (1 - tyz * tyz)
  return (txy - txz * tyz) / math.sqrt(denom) if denom > 1e-12 else float("nan")


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
  """Pearson correlation of the average ranks."""
  x, y = _vectors("spearman_rho", x, y)
  rx, ry = sp.average_ranks(x), sp.average_ranks(y)
  rx, ry = rx - rx.mean(), ry - ry.mean()
  denom = math.sqrt(float(np.sum(rx * rx) * np.sum(ry * ry)))
  return float(np.sum(rx * ry) / denom) if denom else float("nan")


def bootstrap_interval(x: Sequence[float], y: Sequence[float],
                       statistic: Callable[..., float] = kendall_tau_b,
                       samples: int = 2000, level: float = 0.95, seed: int = 0,
                       more: Sequence[Sequence[float]] = ()) -> tuple[float, float]:
  """Percentile bootstrap interval of `statistic(x, y, *more)` over resampled rows (`more`:
  further columns, e.g. the control of a partial tau). A resample whose statistic is undefined
  (e.g. no untied pair left within a group) is skipped; if more than half are, the interval is
  NaN rather than one over the few resamples that happened to be defined."""
  cols = [np.asarray(c, np.float64) for c in (x, y, *more)]
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(samples):
    i = rng.integers(0, len(cols[0]), len(cols[0]))
    v = statistic(*(c[i] for c in cols))
    if math.isfinite(v):
      values.append(v)
  if 2 * len(values) < samples:  # e.g. a constant estimator: tau is undefined in every resample
    return float("nan"), float("nan")
  lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
  return float(lo), float(hi)
