"""The main job: train every block, rate, search and export (docs/method.md#design).

`launch/train_blocks.py` is a thin wrapper around `run`.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from jax.experimental import multihost_utils

from bossnas_jax import files, parallel, summary, utils
from bossnas_jax import search_space as ss
from bossnas_jax.infra import errors
from bossnas_jax.train import loop

ConfigError = errors.ConfigError
_require = errors.require


def check_config(config: ml_collections.ConfigDict) -> None:
  """Validates every value the job uses before any work starts."""
  m, d, t, r = config.model, config.data, config.train, config.rating
  try:
    summary.dims_from_config(config)
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from None
  for f in ("neck_hidden", "proj_dim", "pred_hidden"):
    _require(int(m[f]) > 0, f"model.{f}", m[f], "a positive integer")
  _require(m.compute_dtype in ("auto", "float32", "bfloat16"), "model.compute_dtype",
           m.compute_dtype, "'auto', 'float32' or 'bfloat16'")
  for f in ("batch_size", "accumulate_steps", "epochs_per_block", "checkpoint_every_steps",
            "keep_checkpoints", "log_every_steps"):
    _require(int(t[f]) >= 1, f"train.{f}", t[f], "an integer >= 1")
  min_candidates = min(len(ss.candidates(b, s)) for b in range(4) for s in ss.input_scales(b))
  _require(1 <= int(t.num_paths) <= min_candidates, "train.num_paths", t.num_paths,
           f"1 .. {min_candidates} (the smallest candidate list)")
  for f in ("lr", "lars_eta"):
    _require(float(t[f]) > 0, f"train.{f}", t[f], "a positive number")
  _require(float(t.weight_decay) >= 0, "train.weight_decay", t.weight_decay, ">= 0")
  _require(0 <= float(t.momentum) < 1, "train.momentum", t.momentum, "0 <= momentum < 1")
  _require(0 <= float(t.base_ema) <= float(t.end_ema) <= 1, "train.base_ema", t.base_ema,
           "0 <= base_ema <= end_ema <= 1")
  _require(float(t.warmup_epochs) >= 0, "train.warmup_epochs", t.warmup_epochs, ">= 0")
  _require(0 < float(t.warmup_ratio) <= 1, "train.warmup_ratio", t.warmup_ratio, "in (0, 1]")
  for f in ("blur_prob", "solarize_prob"):
    _require(len(d[f]) == 2 and all(0 <= p <= 1 for p in d[f]), f"data.{f}", d[f],
             "two probabilities in [0, 1] (pipeline 1, pipeline 2)")
  _require(int(d.num_pairs) >= int(t.num_paths), "data.num_pairs", d.num_pairs,
           f"at least train.num_paths = {t.num_paths} (each path uses its own view pair)")
  _require(int(d.calibration_images) >= 1, "data.calibration_images", d.calibration_images,
           ">= 1")
  _require(int(r.batch_size) >= 1, "rating.batch_size", r.batch_size, ">= 1")
  _require(config.search.strategy in ("evolution", "exhaustive", "greedy"), "search.strategy",
           config.search.strategy, "'evolution', 'exhaustive' or 'greedy'")
  calib = loop.calibration_batch(config)
  _require(int(d.calibration_images) % calib == 0, "data.calibration_images",
           d.calibration_images, f"a multiple of the calibration batch {calib} "
           "(min(rating.batch_size, calibration_images)) so that every batch is full")
  parallel.check_batch(int(t.batch_size), "train.batch_size")
  parallel.check_batch(calib, "the calibration batch (min(rating.batch_size, "
                       "data.calibration_images))")


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  parallel.maybe_initialize_distributed()
  files.check_workdir(workdir)
  check_config(config)
  run_ = loop.Run.create(config, workdir)  # Opens the data: a missing data set fails here.
  loop.save_config(config, workdir)
  utils.enable_compilation_cache(os.path.join(workdir, "jax_cache"))
  print(f"bossnas_jax: {jax.process_count()} host(s), {jax.device_count()} "
        f"{jax.default_backend()} device(s); compute dtype {run_.dtype.__name__}; "
        f"{len(run_.train_source):,} training images, {run_.micro_per_epoch} micro-batches of "
        f"{config.train.batch_size} per epoch, {run_.optimizer_steps} optimizer steps per block",
        flush=True)
  loop.train_all_blocks(run_)
  # The search reads only the rank files and takes seconds, so one process does it and writes
  # the exports; the others wait here rather than at JAX's exit barrier, whose timeout is not
  # ours to choose.
  if jax.process_index() == 0:
    from bossnas_jax import export  # matplotlib is only needed here.

    export.search_and_export(workdir, config)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("bossnas_jax: search and export done")
