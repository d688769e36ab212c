"""Where the ranking benchmark's ground-truth noise comes from (benchmarks/ground_truth_noise.py):
per-example agreement of its trainings on the same test images.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bossnas_jax.ranking_quality.protocol import BenchmarkError


def noise_statistics(correct: Mapping[tuple[str, int], np.ndarray]) -> dict:
  """How the trainings of the ground truth differ, from each one's per-example correctness on the
  same test images ({(architecture, seed): bool array}).

  Two trainings of one network that each get an example right with some probability, independently
  per example, differ in top-1 by sd sqrt(d / n) from that alone, where d is the fraction of the n
  examples on which they disagree ("test-set churn"; Jordan, "Calibrated Chaos", ICLR 2024). More
  training steps do not remove it; averaging seeds does. Whatever the observed differences have
  beyond it is a difference between the trained networks themselves. `seed_shift` is what a seed
  does to every network alike (it fixes the data order and augmentation of all of them), which
  leaves their order alone."""
  keys = sorted(correct)
  if not keys:
    raise BenchmarkError("no finished training to analyse.")
  n = len(correct[keys[0]])
  acc = {k: 100.0 * float(np.mean(v)) for k, v in correct.items()}
  by_arch: dict[str, list[int]] = {}
  for a, s in keys:
    by_arch.setdefault(a, []).append(s)
  multi = {a: s for a, s in by_arch.items() if len(s) >= 2}
  seeds = sorted({s for _, s in keys})
  shift = {}
  for s in seeds:
    d = [acc[(a, s)] - np.mean([acc[(a, t)] for t in ss_]) for a, ss_ in multi.items() if s in ss_]
    if d:
      shift[s] = float(np.mean(d))

  def disagreement(pairs):
    values = [float(np.mean(correct[p] != correct[q])) for p, q in pairs]
    return 100.0 * float(np.mean(values)) if values else None

  same_arch = [((a, s), (a, t)) for a, ss_ in multi.items() for i, s in enumerate(ss_)
               for t in ss_[i + 1:]]
  same_seed = [((a, s), (b, s)) for i, (a, s) in enumerate(keys) for (b, t) in keys[i + 1:]
               if t == s and b != a]
  out = {"test_images": n, "trainings": len(keys), "architectures_with_two_seeds": len(multi),
         "seed_shift": {str(s): v for s, v in shift.items()},
         "disagreement_same_architecture": disagreement(same_arch),
         "disagreement_same_seed": disagreement(same_seed)}
  pairs01 = [a for a, ss_ in multi.items() if 0 in ss_ and 1 in ss_]
  if len(pairs01) >= 3:
    diffs = np.array([acc[(a, 0)] - acc[(a, 1)] for a in pairs01])
    d01 = np.array([np.mean(correct[(a, 0)] != correct[(a, 1)]) for a in pairs01])
    observed = float(np.std(diffs, ddof=1))
    churn = 100.0 * float(np.sqrt(np.mean(d01) / n))
    out["seed0_minus_seed1"] = {
        "architectures": len(pairs01), "mean": float(np.mean(diffs)), "sd": observed,
        "sd_from_churn": churn, "churn_share_of_variance": (churn / observed) ** 2
        if observed > 0 else None}
  return out


def format_noise(stats: dict) -> str:
  lines = [f"{stats['trainings']} trainings, {stats['architectures_with_two_seeds']} "
           f"architectures with two or more seeds, {stats['test_images']} test images"]
  if stats["seed_shift"]:
    lines.append("what each seed does to every network (points of top-1 from its mean): " +
                 ", ".join(f"seed {s} {v:+.2f}" for s, v in stats["seed_shift"].items()))
  for key, what in (("disagreement_same_architecture", "one network, two seeds"),
                    ("disagreement_same_seed", "two networks, one seed")):
    if stats[key] is not None:
      lines.append(f"examples on which two trainings disagree ({what}): {stats[key]:.2f}%")
  d = stats.get("seed0_minus_seed1")
  if d:
    lines.append(f"seed 0 - seed 1 over {d['architectures']} networks: mean {d['mean']:+.2f}, sd "
                 f"{d['sd']:.2f} points; test-set churn alone would give sd "
                 f"{d['sd_from_churn']:.2f} ({100 * d['churn_share_of_variance']:.0f}% of the "
                 "variance)")
  return "\n".join(lines)
