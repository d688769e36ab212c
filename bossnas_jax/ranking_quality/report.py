"""The ranking benchmark's summary as people read it: a text table, the README's Markdown table
(rewritten in place between two markers) and a scatter plot per estimator."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from bossnas_jax.infra import files
from bossnas_jax.ranking_quality import protocol
from bossnas_jax.search import export

ESTIMATOR_NOTES = {
    "bossnas": "BossNAS score of the judged search (final rating; the search's sum)",
    "bossnas_first_rating": "the same search, after block training's first rating",
    "bossnas_zscore": "final rating, z-scored per (block, input scale)",
    "bossnas_rank_norm": "final rating, rank-normalised per (block, input scale)",
    "bossnas_long": "BossNAS score of the longer search",
    "bossnas_long_first_rating": "the longer search, after its first rating",
    "bossnas_long_zscore": "longer search, z-scored per (block, input scale)",
    "bossnas_long_rank_norm": "longer search, rank-normalised per (block, input scale)",
    "madds": "MAdds of the retrained network",
    "params": "parameters of the retrained network",
    "naswot": "NASWOT at initialisation (Mellor et al. 2021)",
    "random": "uniform random values (one fixed draw)",
}

README_MARKERS = ("<!-- ranking table: benchmarks/results/ranking_quality.json -->",
                  "<!-- end of ranking table -->")


def ceiling_label(summary: dict, key: str) -> str:
  """What a ceiling compares: the ground truth measured twice, or (single_seed_ceiling) one seed
  against another."""
  k = summary.get(key, {}).get("seeds_per_measurement", 1)
  if key == "single_seed_ceiling" or k == 1:
    what = "seed 0 against seed 1"
  else:
    what = f"mean of seeds 0-{k - 1} against mean of seeds {k}-{2 * k - 1}"
  return ("ceiling" if key == "noise_ceiling" else "one-seed ceiling") + ": " + what


def _num(x, spec: str = ".2f") -> str:
  return "–" if x is None else format(x, spec)


def _with_interval(r: dict, key: str) -> str:
  """'0.40 [0.15, 0.62]' for r[key] and its interval r[key + '_95']; '–' where absent."""
  if r.get(key) is None:
    return "–"
  lo, hi = r.get(f"{key}_95", (None, None))
  return f"{_num(r[key])} [{_num(lo)}, {_num(hi)}]"


def _chain_tau(r: dict, key: str) -> str:
  """_with_interval of kendall_tau_{key}, or why it is missing (too few pairs)."""
  pairs = r.get(f"pairs_{key}")
  if f"kendall_tau_{key}" not in r and pairs is not None:
    return f"– ({pairs} pair{'s' if pairs != 1 else ''})"
  return _with_interval(r, f"kendall_tau_{key}")


def variance_sentence(v: dict) -> str:
  seeds = ", ".join(f"{s}: {e:+.2f}" for s, e in v["seed_effects"].items())
  return (f"Seeds {v['seeds'][0]}-{v['seeds'][-1]} of {v['networks']} networks: the networks' "
          f"top-1 differs by an sd of {v['network_sd']:.2f} points, one training's noise "
          f"(network × seed) is {v['noise_sd']:.2f} points (seed shifts, common to all: {seeds}); "
          f"a mean of {v['seeds_per_measurement']} seeds has reliability {v['reliability']:.2f}, "
          f"so two such measurements are expected to agree with tau "
          f"{v['predicted_ceiling_tau']:.2f}, and a perfect estimator to reach tau "
          f"{v['predicted_best_estimator_tau']:.2f} (normal model).")


def chains_sentence(summary: dict) -> str:
  c = summary["scale_chains"]
  share = c["ground_truth_variance_share"]
  return (f"The {summary['architectures_with_ground_truth']} networks follow {c['chains']} scale "
          f"chains (the scale each block ends at): {c['pairs_between']} pairs of networks differ "
          f"in their chain, {c['pairs_within']} share one; the chains hold "
          f"{_num(None if share is None else 100 * share, '.0f')}% of the ground truth's "
          "variance.")


def format_summary(summary: dict) -> str:
  lines = [f"{summary['architectures_with_ground_truth']} architectures with ground truth "
           f"({summary['trainings']} trainings)"]
  for key in ("noise_ceiling", "single_seed_ceiling"):
    nc = summary.get(key)
    if nc and "kendall_tau" in nc:
      lines.append(f"{ceiling_label(summary, key)} ({nc['n']} architectures): tau "
                   f"{_with_interval(nc, 'kendall_tau')}, rho {_num(nc['spearman_rho'])}, "
                   f"between chains {_chain_tau(nc, 'between_chains')}, within "
                   f"{_chain_tau(nc, 'within_chains')}; mean |diff| "
                   f"{nc['mean_abs_seed_difference']:.2f} points")
  if summary.get("variance_components"):
    lines.append(variance_sentence(summary["variance_components"]))
  if summary.get("scale_chains"):
    lines.append(chains_sentence(summary))
  control = summary.get("partial_control", "-")
  lines.append(f"{'estimator':<26} {'tau [95%]':>19} {'rho':>6} {'between chains':>19} "
               f"{'within a chain':>20} {'given ' + control:>20} {'best pick':>9}")
  for name, r in summary["estimators"].items():
    if "kendall_tau" not in r:
      lines.append(f"{name:<26} (fewer than 3 architectures)")
      continue
    if r["kendall_tau"] is None:
      lines.append(f"{name:<26} (undefined: the estimator is constant)")
      continue
    lines.append(f"{name:<26} {_with_interval(r, 'kendall_tau'):>19} "
                 f"{_num(r['spearman_rho']):>6} "
                 f"{_chain_tau(r, 'between_chains'):>19} "
                 f"{_chain_tau(r, 'within_chains'):>20} "
                 f"{_with_interval(r, 'partial_kendall_tau'):>20} "
                 f"{r['best_pick_top1']:8.2f}%"
                 + (f"  (tau with {control} {r['kendall_tau_with_control']:+.2f})"
                    if r.get("kendall_tau_with_control") is not None else ""))
  return "\n".join(lines)


def markdown_table(summary: dict) -> str:
  """The summary as the README shows it (one row per estimator, then the noise ceilings)."""
  gt = summary["ground_truth_top1"]
  control = summary.get("partial_control")
  rows = [f"Ground truth of {summary['architectures_with_ground_truth']} architectures "
          f"({summary['trainings']} trainings"
          + (f"; top-1 {gt['min']:.2f}–{gt['max']:.2f}%, mean {gt['mean']:.2f}%" if gt["mean"]
             is not None else "") + "); Kendall τ with its 95% bootstrap interval:", "",
          "| estimator | Kendall τ | Spearman ρ | τ between scale chains | τ within a chain | "
          f"partial τ given {control or '–'} | top-1 of its best pick |",
          "|---|---|---|---|---|---|---|"]
  for name, r in summary["estimators"].items():
    if "kendall_tau" not in r:
      continue
    rows.append(f"| `{name}`: {ESTIMATOR_NOTES.get(name, name)} | "
                f"{_with_interval(r, 'kendall_tau')} | {_num(r['spearman_rho'])} | "
                f"{_chain_tau(r, 'between_chains')} | "
                f"{_chain_tau(r, 'within_chains')} | "
                f"{_with_interval(r, 'partial_kendall_tau')} | {_num(r['best_pick_top1'])}% |")
  for key in ("noise_ceiling", "single_seed_ceiling"):
    nc = summary.get(key)
    if nc and "kendall_tau" in nc:
      rows.append(f"| *{ceiling_label(summary, key)} ({nc['n']} networks)* | "
                  f"{_with_interval(nc, 'kendall_tau')} | {_num(nc['spearman_rho'])} | "
                  f"{_chain_tau(nc, 'between_chains')} | "
                  f"{_chain_tau(nc, 'within_chains')} | – | "
                  f"mean \\|difference\\| {_num(nc['mean_abs_seed_difference'])} points |")
  if summary.get("variance_components"):
    rows += ["", variance_sentence(summary["variance_components"])]
  if summary.get("scale_chains"):
    rows += ["", chains_sentence(summary)]
  return "\n".join(rows)


def update_readme(path: str, summary: dict) -> bool:
  """Replaces the table between README_MARKERS in `path` by `markdown_table(summary)`; False
  (and nothing written) when the file has no such block."""
  text = files.read_text(path)
  start, end = README_MARKERS
  i, j = text.find(start), text.find(end)
  if i < 0 or j < i:
    return False
  files.write_text(path, text[:i + len(start)] + "\n" + markdown_table(summary) + "\n"
                   + text[j:])
  return True


def plot(path: str, plan: Sequence[dict], results: Mapping[str, dict],
         estimators: Mapping[str, Sequence[float]], summary: dict) -> str:
  """One scatter per estimator: its value against the mean ground-truth top-1, coloured by the
  network's scale chain."""
  gt = protocol.ground_truth(plan, results)
  archs = [row["architecture"] for row in plan]
  # Colour = scale chain (tab10 repeats after 10 chains): the BossNAS score's levels are chains.
  order = list(dict.fromkeys(protocol.scale_chain(a) for a in archs))
  chain = {a: order.index(protocol.scale_chain(a)) % 10 for a in archs}
  names = list(estimators)
  cols = 3
  rows = math.ceil(len(names) / cols)
  fig = export.figure(4.2 * cols, 3.4 * rows, dpi=100)
  for k, name in enumerate(names):
    ax = fig.add_subplot(rows, cols, k + 1)
    pts = [(estimators[name][i], np.mean(list(gt[a].values())), plan[i]["group"], chain[a])
           for i, a in enumerate(archs) if a in gt and math.isfinite(estimators[name][i])]
    for group, marker in (("random", "o"), ("score_spread", "^")):
      sel = [p for p in pts if p[2] == group]
      ax.scatter([p[0] for p in sel], [p[1] for p in sel], c=[p[3] for p in sel], s=16,
                 marker=marker, cmap="tab10", vmin=0, vmax=9, label=group.replace("_", " "))
    r = summary["estimators"].get(name, {})
    tau = f"tau {r['kendall_tau']:.2f}" if r.get("kendall_tau") is not None else ""
    ax.set_title(f"{name}  {tau}", fontsize=9)
    ax.set_xlabel("estimator (higher = predicted better)", fontsize=8)
    ax.set_ylabel("top-1 (%)", fontsize=8)
    ax.tick_params(labelsize=7)
    if k == 0:
      ax.legend(fontsize=7)
  fig.tight_layout()
  return export.save_figure(fig, path)
