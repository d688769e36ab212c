"""Export of a searched architecture (docs/method.md#search-and-export): architecture.json, a
retraining config, plots.

`search_and_export(workdir, config_or_args)` is what the main job and `launch/search.py` call: it
reads the rank files, searches, writes into the workdir

  architecture.json     the 4 paths, 16 op indices, BossNet stage encoding, MAdds and params in
                        both conventions, per-block scores, budget, strategy, resolution
  retrain_config.py     get_config() for the retraining: configs/retrain.py plus this network
  search_pareto.png     score against MAdds: Pareto front, a cloud of other architectures, the
                        choice, the budget
  block_scores.png      each block's score distribution per input scale

and prints the choice, its cost and these paths.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Callable

import numpy as np

from bossnas_jax import search_space as ss
from bossnas_jax.infra import files
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.models import cost
from bossnas_jax.search import architecture
from bossnas_jax.search import problem as sp
from bossnas_jax.search import strategies as sr

RETRAIN_CONFIG = "retrain_config.py"
PARETO_PNG = "search_pareto.png"
BLOCK_SCORES_PNG = "block_scores.png"
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------------
# architecture.json


def _cost_dict(c: cost.Cost) -> dict:
  return {"madds": c.madds, "params": c.params}


def architecture_costs(arch: ss.Architecture, resolution: int) -> dict[str, cost.Cost]:
  """The exported BossNet's cost in both conventions."""
  return {conv: cost.architecture_cost(arch, resolution, conv, **bs.SEARCHED_OPTIONS)
          for conv in cost.CONVENTIONS}


def architecture_record(result: sr.SearchResult) -> dict:
  arch, st = result.architecture, result.settings
  opt = result.optimum
  return {
      "format": FORMAT_VERSION,
      "architecture": str(arch),
      "paths": [ss.format_path(p) for p in arch.paths],
      "ops": list(arch.ops),
      "block_input_scales": [ss.SCALE_NAMES[arch.input_scale(b)] for b in range(ss.NUM_BLOCKS)],
      "stage_encoding": [list(s) for s in arch.stage_encoding()],
      "bossnet": dict(bs.SEARCHED_OPTIONS),
      "resolution": st.resolution,
      "cost": {k: _cost_dict(v) for k, v in architecture_costs(arch, st.resolution).items()},
      "score": result.chosen.score,
      "block_scores": list(result.chosen.block_scores),
      "strategy": st.strategy,
      "budget": {"max_madds": st.max_madds, "max_params": st.max_params,
                 "max_latency_ms": st.max_latency_ms, "convention": st.convention},
      "latency": None if result.chosen.latency_ms is None else {
          "predicted_ms": result.chosen.latency_ms, "table": st.latency_table,
          "measured_on": result.latency_header},
      "within_budget": result.within_budget,
      "search": {
          **{k: v for k, v in dataclasses.asdict(st).items()
             if k not in ("strategy", "max_madds", "max_params", "max_latency_ms", "resolution",
                          "convention")},
          "num_architectures": result.num_architectures,
          "evaluated": result.evaluated,
          "pareto_front_size": len(result.front),
          "exact_optimum": str(opt.architecture) if opt else None,
          "exact_optimum_score": opt.score if opt else None,
          "notes": list(result.notes),
      },
  }


def _dumps(x, depth: int = 0) -> str:
  """JSON with one key per line but short lists (ops, scores, the stage encoding) on one line."""
  pad, end = "  " * (depth + 1), "  " * depth
  if isinstance(x, dict) and x:
    rows = [f"{pad}{json.dumps(k)}: {_dumps(v, depth + 1)}" for k, v in x.items()]
    return "{\n" + ",\n".join(rows) + "\n" + end + "}"
  if isinstance(x, list) and any(isinstance(v, dict) or len(json.dumps(v)) > 40 for v in x):
    return "[\n" + ",\n".join(pad + _dumps(v, depth + 1) for v in x) + "\n" + end + "]"
  return json.dumps(x, allow_nan=False)


def write_json(path: str, record: dict) -> str:
  return files.write_text(path, _dumps(record) + "\n")


# ------------------------------------------------------------------------------------------------
# retrain_config.py

_RETRAIN_TEMPLATE = '''"""Retraining config of the searched BossNet (bossnas_jax.search.export).

{arch}: stages {enc},
{madds:.3f}G MAdds and {params:.2f}M params at {res}x{res} (true convention).
{fetch}
  python launch/retrain.py --config {local} --workdir RETRAIN_DIR       # full recipe
  python launch/retrain.py --config {local}:demo --workdir RETRAIN_DIR  # demo recipe, embedded data
"""

ARCHITECTURE = "{arch}"
RESOLUTION = {res}
# Every BossNet stage at its own stride: the scales the supernet path ran at.
EMPTY_STAGE_STRIDE = "{stride}"


def get_config(arg=None):
  # The retraining recipe (docs/method.md#retraining-recipe) lives in configs/retrain.py ('demo'
  # selects its demo); this file only puts the searched network and its resolution on top of it.
  try:
    from configs import retrain
  except ModuleNotFoundError as e:
    if e.name not in ("configs", "configs.retrain"):
      raise
    raise ModuleNotFoundError(
        "retrain_config.py builds on configs/retrain.py, which was not found; "
        "run launch/retrain.py from the root of a bossnas_jax checkout.") from e
  config = retrain.get_config(arg)
  config.model.arch = ARCHITECTURE
  config.model.empty_stage_stride = EMPTY_STAGE_STRIDE
  config.model.resolution = RESOLUTION
  return config
'''


def write_retrain_config(path: str, arch: ss.Architecture, resolution: int) -> str:
  c = cost.architecture_cost(arch, resolution, "true", **bs.SEARCHED_OPTIONS)
  local, fetch = path, ""
  if files.is_url(path):  # --config reads local files only.
    local = os.path.basename(path)
    fetch = f"\n  gcloud storage cp {path} .\n"
  text = _RETRAIN_TEMPLATE.format(
      arch=arch, enc=ss.format_stage_encoding(arch.stage_encoding()), madds=c.madds / 1e9,
      params=c.params / 1e6, res=resolution, local=local, fetch=fetch, stride=bs.SEARCHED_OPTIONS[
          "empty_stage_stride"])
  return files.write_text(path, text)


# ------------------------------------------------------------------------------------------------
# Plots (matplotlib's Agg canvas directly: no pyplot, no global backend switch).


def figure(width: float, height: float, dpi: int = 110):
  """A matplotlib Figure without pyplot (no global state, no display)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width, height), dpi=dpi)
  FigureCanvasAgg(fig)
  return fig


def sample_architectures(problem: sp.Problem, n: int, seed: int = 0) -> list[sp.Evaluated]:
  """`n` random valid chains (each block uniform among its rated candidates), for the cloud."""
  rng = np.random.default_rng(seed)
  out = {}
  for _ in range(n):
    paths, s = [], ss.STEM_SCALE
    for b in range(ss.NUM_BLOCKS):
      t = problem.table(b, s)
      i = int(rng.integers(len(t.paths)))
      paths.append(t.paths[i])
      s = int(t.out_scales[i])
    out[tuple(paths)] = None
  return [sp.evaluate(problem, ss.Architecture(p)) for p in out]


def plot_pareto(path: str, result: sr.SearchResult, problem: sp.Problem,
                cloud: int = 3000) -> str:
  st = result.settings
  with_latency = result.chosen.latency_ms is not None
  fig = figure(16 if with_latency else 9, 6)
  ax = fig.add_subplot(1, 2, 1) if with_latency else fig.add_subplot()
  others = sample_architectures(problem, cloud, st.seed)
  ax.scatter([e.cost.madds / 1e9 for e in others], [e.score for e in others], s=6,
             color="0.75", alpha=0.5, linewidths=0, label=f"random architectures ({len(others)})",
             zorder=1)
  front = result.front
  fm = np.array([e.cost.madds / 1e9 for e in front])
  fs = np.array([e.score for e in front])
  fp = np.array([e.cost.params / 1e6 for e in front])
  ok = np.array([st.max_params is None or e.cost.params <= st.max_params for e in front])
  objectives = "score, MAdds, params" + (", latency" if with_latency else "")
  sc = ax.scatter(fm[ok], fs[ok], c=fp[ok], cmap="viridis", s=28, edgecolors="k",
                  linewidths=0.4, vmin=fp.min(), vmax=fp.max(),
                  label=f"Pareto front ({objectives}): {len(front)}", zorder=3)
  if (~ok).any():
    ax.scatter(fm[~ok], fs[~ok], c=fp[~ok], cmap="viridis", s=28, marker="X",
               vmin=fp.min(), vmax=fp.max(), linewidths=0.4, edgecolors="k",
               label="front, over the params budget", zorder=3)
  fig.colorbar(sc, ax=ax, label="params (M)")
  # The score-MAdds trade-off alone: the best score reachable at each MAdds.
  order = np.argsort(fm, kind="stable")
  best = np.minimum.accumulate(fs[order])
  end = int(np.argmin(best)) + 1  # Past the overall best the staircase is flat: stop there.
  ax.step(fm[order][:end], best[:end], where="post", color="tab:blue", lw=1.2, alpha=0.8,
          label="best score at each MAdds", zorder=2)
  if st.max_madds:
    ax.axvline(st.max_madds / 1e9, color="tab:red", ls="--", lw=1.2,
               label=f"MAdds budget {st.max_madds / 1e9:.3g}G", zorder=2)
  c = result.chosen
  ax.scatter([c.cost.madds / 1e9], [c.score], marker="*", s=320, color="tab:red",
             edgecolors="k", linewidths=0.8, zorder=5,
             label=f"chosen ({st.strategy}): {c.architecture}")
  lo, hi = ax.get_xlim()
  left = c.cost.madds / 1e9 > (lo + hi) / 2  # Keep the label inside the axes.
  ax.annotate(f"{c.architecture}\n{c.cost.madds / 1e9:.2f}G, {c.cost.params / 1e6:.1f}M",
              (c.cost.madds / 1e9, c.score), xytext=(-14 if left else 14, 14),
              textcoords="offset points", ha="right" if left else "left", fontsize=9,
              bbox=dict(boxstyle="round", fc="white", ec="0.6", alpha=0.9), zorder=6)
  opt = result.optimum
  if opt is not None and opt.key() != c.key():
    ax.scatter([opt.cost.madds / 1e9], [opt.score], marker="D", s=70, color="tab:orange",
               edgecolors="k", zorder=4, label=f"exact optimum: {opt.architecture}")
  greedy = sr.greedy(problem)
  if st.strategy != "greedy" and greedy.key() != c.key():
    ax.scatter([greedy.cost.madds / 1e9], [greedy.score], marker="s", s=50, facecolors="none",
               edgecolors="tab:purple", linewidths=1.5, zorder=4,
               label=f"official greedy rule: {greedy.architecture}")
  ax.set_xlabel(f"MAdds of the BossNet (G, {st.convention} convention, {st.resolution}x"
                f"{st.resolution})")
  ax.set_ylabel("score: sum of block scores (lower is better)" if st.normalize == "none" else
                f"score: sum of {st.normalize}-normalised block scores (lower is better)")
  ax.set_title(f"Search over {result.num_architectures:,} rated architectures")
  ax.grid(alpha=0.3)
  legend = ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
  for handle, text in zip(legend.legend_handles, legend.get_texts()):
    if text.get_text().startswith(("Pareto", "front")):  # Not the colour of one point.
      handle.set_array(None)
      handle.set_facecolor(sc.cmap(0.5))
  if with_latency:
    _latency_panel(fig.add_subplot(1, 2, 2, sharey=ax), result, others)
  fig.tight_layout()
  return save_figure(fig, path)


def _latency_panel(ax, result: sr.SearchResult, others: list[sp.Evaluated]) -> None:
  """Score against the latency the table predicts (docs/method.md#latency), with its budget."""
  st, c = result.settings, result.chosen
  ax.scatter([e.latency_ms for e in others], [e.score for e in others], s=6, color="0.75",
             alpha=0.5, linewidths=0, label=f"random architectures ({len(others)})", zorder=1)
  front = [e for e in result.front if e.latency_ms is not None]
  ax.scatter([e.latency_ms for e in front], [e.score for e in front], s=28, color="tab:blue",
             edgecolors="k", linewidths=0.4, label=f"Pareto front: {len(front)}", zorder=3)
  if st.max_latency_ms:
    ax.axvline(st.max_latency_ms, color="tab:red", ls="--", lw=1.2,
               label=f"latency budget {st.max_latency_ms:g} ms", zorder=2)
  ax.scatter([c.latency_ms], [c.score], marker="*", s=320, color="tab:red", edgecolors="k",
             linewidths=0.8, zorder=5, label=f"chosen: {c.architecture}, {c.latency_ms:.2f} ms")
  header = result.latency_header or {}
  on = ", ".join(str(header[k]) for k in ("device_kind", "dtype") if k in header)
  ax.set_xlabel(f"predicted latency (ms, batch {st.latency_batch}{', ' + on if on else ''}; "
                "the table's sum)")
  ax.set_title("Score against predicted latency")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="upper right", framealpha=0.9)


def plot_block_scores(path: str, problem: sp.Problem, chosen: sp.Evaluated) -> str:
  fig = figure(4 * ss.NUM_BLOCKS, 4.5)
  rng = np.random.default_rng(0)
  arch = chosen.architecture
  for b in range(ss.NUM_BLOCKS):
    ax = fig.add_subplot(1, ss.NUM_BLOCKS, b + 1)
    scales = problem.in_scales(b)
    data = [problem.table(b, s).scores for s in scales]
    ax.boxplot(data, widths=0.5, showfliers=False, medianprops=dict(color="tab:blue"))
    for k, d in enumerate(data):
      ax.scatter(k + 1 + rng.uniform(-0.18, 0.18, len(d)), d, s=9, color="0.35", alpha=0.6,
                 linewidths=0, zorder=3)
    s = arch.input_scale(b)
    t = problem.table(b, s)
    i = t.index[arch.paths[b]]
    k = scales.index(s) + 1
    ax.scatter([k], [t.scores[i]], marker="*", s=220, color="tab:red", edgecolors="k",
               zorder=5)
    ax.set_xticks(range(1, len(scales) + 1))
    ax.set_xticklabels([f"in {ss.SCALE_NAMES[s]}x{ss.SCALE_NAMES[s]}\n"
                        f"({len(problem.table(b, s).paths)} paths)" for s in scales])
    # The chosen path goes in the title: a legend box would hide whatever scale sits under it.
    ax.set_title(f"block {b}: chosen {ss.format_path(arch.paths[b])} (\u2605)")
    ax.grid(axis="y", alpha=0.3)
    if b == 0:
      ax.set_ylabel("rating score (lower is better)")
  fig.suptitle("Candidate scores per block and input scale (rank files)")
  fig.tight_layout()
  return save_figure(fig, path)


def save_figure(fig, path: str) -> str:
  """PNG bytes written whole (matplotlib cannot write to a bucket URL)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  return files.write_bytes(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------------
# Everything at once.


@dataclasses.dataclass(frozen=True)
class ExportResult:
  search: sr.SearchResult
  files: dict[str, str]  # architecture_json, retrain_config, pareto_png, block_scores_png
  costs: dict[str, cost.Cost]  # the chosen BossNet in both conventions
  summary: str

  @property
  def architecture(self) -> ss.Architecture:
    return self.search.architecture


def export(out_dir: str, result: sr.SearchResult, problem: sp.Problem) -> dict[str, str]:
  """Writes the four files of the module docstring into `out_dir`; returns their paths."""
  files.makedirs(out_dir)
  j = lambda name: os.path.join(out_dir, name)
  return {
      "architecture_json": write_json(j(architecture.ARCHITECTURE_JSON),
                                      architecture_record(result)),
      "retrain_config": write_retrain_config(j(RETRAIN_CONFIG), result.architecture,
                                             result.settings.resolution),
      "pareto_png": plot_pareto(j(PARETO_PNG), result, problem),
      "block_scores_png": plot_block_scores(j(BLOCK_SCORES_PNG), problem, result.chosen),
  }


def summarize(result: sr.SearchResult, costs: dict[str, cost.Cost],
              files: dict[str, str]) -> str:
  st, c = result.settings, result.chosen
  arch = c.architecture
  t, o = costs["true"], costs["official"]
  opt = result.optimum
  lines = [
      f"search: strategy {st.strategy}, budget {st.describe_budget()}"
      + ("" if st.normalize == "none" else f", block scores {st.normalize}-normalised") + "; "
      f"{result.num_architectures:,} rated architectures, {result.evaluated:,} scored",
      f"chosen: {arch}  score {c.score:.4f} (blocks "
      + ", ".join(f"{v:.4f}" for v in c.block_scores) + ")",
      f"  BossNet stages {ss.format_stage_encoding(arch.stage_encoding())} at "
      f"{st.resolution}x{st.resolution}, full width, 1000 classes: {t.madds / 1e9:.3f}G MAdds, "
      f"{t.params / 1e6:.2f}M params (true); {o.madds / 1e9:.3f}G, {o.params / 1e6:.2f}M "
      "(official counter)"
      + ("" if c.latency_ms is None else
         f"; predicted latency {c.latency_ms:.3f} ms ({st.latency_table})"),
      "  exact optimum under the budget: "
      + ("none" if opt is None else "this one" if opt.key() == c.key()
         else f"{opt.architecture} (score {opt.score:.4f})")
      + f"; Pareto front of {len(result.front)} architectures",
  ]
  lines += [f"  note: {n}" for n in result.notes]
  lines.append("wrote:")
  lines += [f"  {p}" for p in files.values()]
  return "\n".join(lines)


SEARCHES = "search"  # A re-search's exports: WORKDIR/search/<its settings' tag>/.


def search_tag(settings: sp.SearchSettings) -> str:
  """A folder name that says what a re-search searched for, e.g. 'exhaustive_madds0.08G_res224'."""
  parts = [settings.strategy]
  if settings.max_madds:
    parts.append(f"madds{settings.max_madds / 1e9:g}G")
  if settings.max_params:
    parts.append(f"params{settings.max_params / 1e6:g}M")
  if settings.max_latency_ms:
    parts.append(f"latency{settings.max_latency_ms:g}ms")
  if (settings.max_madds or settings.max_params) and settings.convention != "true":
    parts.append(settings.convention)
  parts.append(f"res{settings.resolution}")
  if settings.normalize != "none":
    parts.append(settings.normalize)
  if settings.strategy == "evolution":
    parts.append(f"seed{settings.seed}")
  return "_".join(parts)


def search_and_export(workdir: str, config_or_args=None, *, out_dir: str | None = None,
                      log: Callable[[str], None] | None = print, **overrides) -> ExportResult:
  """Searches the rank files of `workdir` and exports the choice (into `out_dir`, default the
  workdir). `config_or_args`: the experiment config (its `search` section and `seed`), a mapping
  or argparse Namespace of search settings, or SearchSettings; `overrides` win over it."""
  result, problem = sr.run_search(workdir, config_or_args, **overrides)
  files = export(out_dir or workdir, result, problem)
  costs = architecture_costs(result.architecture, result.settings.resolution)
  text = summarize(result, costs, files)
  if log is not None:
    log(text)
  return ExportResult(result, files, costs, text)


def research(workdir: str, out_dir: str | None = None, *,
             log: Callable[[str], None] | None = print, **overrides) -> ExportResult:
  """A search of a main job's rank files with other settings (`launch/search.py`): the run's own
  settings (the `search` section and `seed` of its config.json, where it has one), then
  `overrides` (None keeps the run's). The exports go to `out_dir`, by default
  WORKDIR/search/<tag of the settings>, so the main job's own choice in WORKDIR stays as it is."""
  path = os.path.join(workdir, files.CONFIG_JSON)
  saved = files.read_json(path) if files.exists(path) else None
  settings = sp.settings_from(saved, **overrides)  # Bad settings fail before any reading.
  out = out_dir or os.path.join(workdir, SEARCHES, search_tag(settings))
  return search_and_export(workdir, settings, out_dir=out, log=log)
