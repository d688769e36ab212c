"""The main job (docs/method.md#design): for each block in turn, train it (`train/`), rate every
candidate toward the population centre (`rating/`), and freeze the best path ending at each scale
as the next block's prefix; then search the rank files and export the choice (`search/`).

`launch/train_blocks.py` is a thin wrapper around `run`. Layout of a workdir:
  config.json                 the run's config (a restart with an incompatible one is refused)
  checkpoints/block{b}/{step} Orbax checkpoints of block b's state, with the data iterator state
  ratings/block{b}_in{s}.json rank files; ratings/history/ every rating (_epoch{e}.json);
                              ratings/partial/ the progress of an unfinished rating
  prefix/block{b}_in{s}_{path}/0  a frozen path (target weights, recalibrated BN statistics)
  blocks_done.json            finished blocks and the prefix chains they hand on
  metrics.jsonl, tb/          per-step metrics, TensorBoard events
  jax_cache/                  JAX's persistent compilation cache
  architecture.json, ...      the search's choice and its exports (search/export.py)
"""

from __future__ import annotations

import os

import jax
import ml_collections
from jax.experimental import multihost_utils

from bossnas_jax import search_space as ss
from bossnas_jax.infra import compile_cache, errors, files, parallel
from bossnas_jax.models import siamese, summary, supernet
from bossnas_jax.rating import block_rating, bn_statistics
from bossnas_jax.search import problem as sp
from bossnas_jax.train import loop
from bossnas_jax.train import step as step_lib


def check_config(config: ml_collections.ConfigDict) -> None:
  """Validates every value the job uses before any work starts."""
  m, d, t, r = config.model, config.data, config.train, config.rating
  try:
    summary.dims_from_config(config)
  except ValueError as e:
    raise errors.ConfigError(f"config.model: {e}") from None
  for f in ("neck_hidden", "proj_dim", "pred_hidden"):
    errors.require(int(m[f]) > 0, f"model.{f}", m[f], "a positive integer")
  errors.require(m.compute_dtype in parallel.COMPUTE_DTYPES, "model.compute_dtype",
                 m.compute_dtype, " or ".join(repr(d) for d in parallel.COMPUTE_DTYPES))
  for f in ("batch_size", "accumulate_steps", "epochs_per_block", "checkpoint_every_steps",
            "keep_checkpoints"):
    errors.require(int(t[f]) >= 1, f"train.{f}", t[f], "an integer >= 1")
  min_candidates = min(len(ss.candidates(b, s)) for b in range(ss.NUM_BLOCKS)
                       for s in ss.input_scales(b))
  errors.require(1 <= int(t.num_paths) <= min_candidates, "train.num_paths", t.num_paths,
                 f"1 .. {min_candidates} (the smallest candidate list)")
  for f in ("lr", "lars_eta"):
    errors.require(float(t[f]) > 0, f"train.{f}", t[f], "a positive number")
  errors.require(float(t.weight_decay) >= 0, "train.weight_decay", t.weight_decay, ">= 0")
  errors.require(0 <= float(t.momentum) < 1, "train.momentum", t.momentum, "0 <= momentum < 1")
  errors.require(0 <= float(t.base_ema) <= float(t.end_ema) <= 1, "train.base_ema", t.base_ema,
                 "0 <= base_ema <= end_ema <= 1")
  errors.require(float(t.warmup_epochs) >= 0, "train.warmup_epochs", t.warmup_epochs, ">= 0")
  errors.require(0 < float(t.warmup_ratio) <= 1, "train.warmup_ratio", t.warmup_ratio, "in (0, 1]")
  for f in ("blur_prob", "solarize_prob"):
    errors.require(len(d[f]) == 2 and all(0 <= p <= 1 for p in d[f]), f"data.{f}", d[f],
                   "two probabilities in [0, 1] (pipeline 1, pipeline 2)")
  errors.require(int(d.num_pairs) >= int(t.num_paths), "data.num_pairs", d.num_pairs,
                 f"at least train.num_paths = {t.num_paths} (each path uses its own view pair)")
  errors.require(int(d.calibration_images) >= 1, "data.calibration_images", d.calibration_images,
                 ">= 1")
  errors.require(int(r.batch_size) >= 1, "rating.batch_size", r.batch_size, ">= 1")
  errors.require(config.search.strategy in sp.STRATEGIES, "search.strategy",
                 config.search.strategy, " or ".join(repr(s) for s in sp.STRATEGIES))
  calib = loop.calibration_batch(config)
  errors.require(int(d.calibration_images) % calib == 0, "data.calibration_images",
                 d.calibration_images, f"a multiple of the calibration batch {calib} "
                 "(min(rating.batch_size, calibration_images)) so that every batch is full")
  parallel.check_batch(int(t.batch_size), "train.batch_size")
  parallel.check_batch(calib, "the calibration batch (min(rating.batch_size, "
                       "data.calibration_images))")


def freeze_block(run: loop.Run, block: int, state: siamese.BlockState, in_scale: int, path: ss.Path,
                 chain: list[loop.Frozen]) -> loop.Frozen:
  """The target weights of `path` with BN statistics recalibrated over the calibration set."""
  trainer = loop.trainers_for(run, block, {in_scale: chain})[in_scale]
  frozen = step_lib.PrefixBlock(block, in_scale, tuple(path))
  units = supernet.path_units(run.dims, block, in_scale, frozen.path)
  params = [supernet.unit_params(state.target["block"], run.dims, u) for u in units]
  pairs = [x for x, _ in loop.block_inputs(run, trainer, tuple(f.variables for f in chain),
                                           run.calibration_set(), run.calibration_key(block))]
  stats = bn_statistics.calibrate_units(run.dims, run.dtype, run.mesh, units, params, pairs)
  variables = {"params": supernet.path_variables({"params": state.target["block"]}, run.dims,
                                                  block, in_scale, frozen.path)["params"],
               "batch_stats": stats}
  return loop.Frozen(frozen, parallel.replicate(variables, run.mesh))


def next_chains(run: loop.Run, block: int, state, chains, scores) -> dict[int, list[loop.Frozen]]:
  """For every scale some candidate of `block` ends at, the best-scored such candidate (with its
  own chain) becomes the next block's prefix there (docs/method.md#search-and-export)."""
  best: dict[int, tuple[float, int, ss.Path]] = {}
  for s, per in scores.items():
    for p, v in per.items():
      d = ss.output_scale(p)
      if d not in best or v < best[d][0]:
        best[d] = (v, s, p)
  out = {}
  for d, (v, s, p) in sorted(best.items(), reverse=True):
    frozen = freeze_block(run, block, state, s, p, chains[s])
    loop.save_frozen(run, frozen)
    out[d] = chains[s] + [frozen]
    print(f"block {block}: best path ending at {ss.SCALE_NAMES[d]}x{ss.SCALE_NAMES[d]} is "
          f"{ss.format_path(p)} (score {v:.4f}, input {ss.SCALE_NAMES[s]}x{ss.SCALE_NAMES[s]})",
          flush=True)
  return out


def progress_file(run: loop.Run) -> str:
  return os.path.join(run.workdir, "blocks_done.json")


def train_block(run: loop.Run, block: int, chains: dict[int, list[loop.Frozen]]
                ) -> siamese.BlockState:
  """Block training, with its ratings inside the block (every `rating.rate_every_epochs`)."""
  return loop.train_block(
      run, block, chains, rate_at=block_rating.rating_epochs(run.config),
      rate=lambda epoch, state: block_rating.rate_within(run, block, state, chains, epoch))


def train_all_blocks(run: loop.Run) -> dict[int, list[loop.Frozen]]:
  """Blocks 0..3 in turn: train, rate, and freeze the best path ending at every scale."""
  done = files.read_json(progress_file(run)) if files.exists(progress_file(run)) else {}
  chains: dict[int, list[loop.Frozen]] = {ss.STEM_SCALE: []}
  for block in range(ss.NUM_BLOCKS):
    if str(block) in done:
      chains = {int(d): [loop.load_frozen(p, run.mesh) for p in dirs]
                for d, dirs in done[str(block)].items()}
      print(f"block {block}: finished earlier; carries scales "
            f"{', '.join(ss.SCALE_NAMES[d] for d in sorted(chains, reverse=True))}", flush=True)
      continue
    state = train_block(run, block, chains)
    scores = block_rating.rate_block(run, block, state, chains)
    if block + 1 < ss.NUM_BLOCKS:
      chains = next_chains(run, block, state, chains, scores)
    done[str(block)] = {str(d): [loop.frozen_dir(run, f.block.block, f.block.in_scale, f.block.path)
                                 for f in chain] for d, chain in chains.items()}
    if jax.process_index() == 0:
      files.write_json(progress_file(run), done, indent=1)
  return chains


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  parallel.maybe_initialize_distributed()
  files.check_workdir(workdir)
  check_config(config)
  run_ = loop.Run.create(config, workdir)  # Opens the data: a missing data set fails here.
  loop.save_config(config, workdir)
  compile_cache.enable(os.path.join(workdir, "jax_cache"))
  print(f"bossnas_jax: {jax.process_count()} host(s), {jax.device_count()} "
        f"{jax.default_backend()} device(s); compute dtype {run_.dtype.__name__}; "
        f"{len(run_.train_source):,} training images, {run_.micro_per_epoch} micro-batches of "
        f"{config.train.batch_size} per epoch, {run_.optimizer_steps} optimizer steps per block",
        flush=True)
  train_all_blocks(run_)
  # The search reads only the rank files and takes seconds, so one process does it and writes
  # the exports; the others wait here rather than at JAX's exit barrier, whose timeout is not
  # ours to choose.
  if jax.process_index() == 0:
    from bossnas_jax.search import export  # matplotlib is only needed here.

    export.search_and_export(workdir, config)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("bossnas_jax: search and export done")
