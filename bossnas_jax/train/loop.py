"""Block-wise training (docs/method.md#block-training): blocks 0..3 in turn, resumable at any
checkpoint.

For block b: build the state (or restore the newest verified checkpoint), run the block's epochs of
ensemble bootstrapping over the candidates of every input scale the previous block hands on, rate
every candidate toward the population centre, and, for every scale some candidate ends at, freeze
the best-scored one (with its own chain) as the next block's prefix there: target weights with BN
statistics recalibrated exactly on the calibration set (docs/method.md#d3, #d6,
#search-and-export).

Layout of a workdir:
  config.json                 the run's config (a restart with an incompatible one is refused)
  checkpoints/block{b}/{step} Orbax checkpoints of block b's state, with the data iterator state
  ratings/block{b}_in{s}.json rank files; ratings/partial/ the progress of an unfinished rating
  prefix/block{b}_in{s}_{path}/0  a frozen path (target weights, recalibrated BN statistics)
  blocks_done.json            finished blocks and the prefix chains they hand on
  metrics.jsonl, tb/          per-step metrics, TensorBoard events
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from bossnas_jax import calibration, checkpoint_io, files, parallel
from bossnas_jax import search_space as ss
from bossnas_jax.data import device_augment, pipeline
from bossnas_jax.infra import errors, interrupt
from bossnas_jax.models import supernet
from bossnas_jax.train import lars as lars_lib
from bossnas_jax.train import metrics as metrics_lib
from bossnas_jax.train import schedules
from bossnas_jax.train import step as step_lib

log = logging.getLogger(__name__)


TrainingError = errors.TrainingError


@dataclasses.dataclass
class Frozen:
  """A finished block: its chosen path and the variables the next blocks run it with."""

  block: step_lib.PrefixBlock
  variables: Any

  @property
  def out_scale(self) -> int:
    return ss.output_scale(self.block.path)


def compute_dtype(name: str):
  """'auto' is float32 on CPU and bfloat16 on accelerators (docs/method.md#d10)."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


@dataclasses.dataclass
class Run:
  """What every block of one run shares."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any
  dims: ss.Dims
  dtype: Any
  key: jax.Array
  train_source: Any

  @classmethod
  def create(cls, config, workdir: str) -> Run:
    dims = ss.Dims(float(config.model.width_multiplier), int(config.model.resolution),
                   int(config.model.dim_head))
    source = pipeline.open_split(config.data, config.data.train_split)
    return cls(config=config, workdir=workdir, mesh=parallel.data_mesh(), dims=dims,
               dtype=compute_dtype(config.model.compute_dtype),
               key=jax.random.key(int(config.seed), impl="rbg"), train_source=source)

  def models(self, block: int) -> step_lib.Models:
    m = self.config.model
    return step_lib.Models(self.dims, block, int(m.neck_hidden), int(m.proj_dim),
                           int(m.pred_hidden), self.dtype)

  @functools.cached_property
  def augment(self):
    d = self.config.data
    return functools.partial(device_augment.device_augment, blur_prob=tuple(d.blur_prob),
                             solarize_prob=tuple(d.solarize_prob), dtype=self.dtype)

  @property
  def micro_per_epoch(self) -> int:
    return pipeline.steps_per_epoch(len(self.train_source), int(self.config.train.batch_size))

  @property
  def optimizer_steps(self) -> int:
    t = self.config.train
    return self.micro_per_epoch * int(t.epochs_per_block) // int(t.accumulate_steps)

  def block_dir(self, block: int) -> str:
    return os.path.join(self.workdir, "checkpoints", f"block{block}")

  def optimizer(self):
    t = self.config.train
    return lars_lib.lars(float(t.momentum), float(t.weight_decay), float(t.lars_eta))

  def calibration_key(self, block: int):
    """The device-augmentation key of the calibration and rating views of `block` (fixed)."""
    return jax.random.fold_in(self.key, 10_000 + block)

  def calibration_set(self):
    return pipeline.calibration_set(
        self.config.data, resolution=self.dims.resolution, seed=int(self.config.seed),
        global_batch_size=calibration_batch(self.config), mesh=self.mesh)


def calibration_batch(config) -> int:
  return min(int(config.rating.batch_size), int(config.data.calibration_images))


# ------------------------------------------------------------------------------------------------


def _restore_or_init(run: Run, trainer: step_lib.BlockTrainer, block: int):
  """(state, micro-batches done, data iterator state or None)."""
  models = trainer.models
  key = jax.random.fold_in(run.key, block)
  directory = run.block_dir(block)
  init = functools.partial(step_lib.init_state, models, key, trainer.optimizer)
  if checkpoint_io.all_steps(directory):
    # Restored to host memory and verified there, then placed: a sharded restore of a corrupt
    # step can leave a device's queue waiting on a failed transfer, which later deadlocks the
    # collectives of XLA:CPU's simulated devices.
    host = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(init))
    state, meta, step = checkpoint_io.restore(directory, abstract=host)
    state = parallel.replicate(state, run.mesh)
    checkpoint_io.set_aside_newer(directory, step)
    print(f"block {block}: resumed from optimizer step {step} ({directory})", flush=True)
    return state, int(meta["micro"]), meta["data"]
  return parallel.replicate(init(), run.mesh), 0, None


def _save(run: Run, block: int, state, micro: int, data_state) -> None:
  step = int(jax.device_get(state.step))
  meta = {"block": block, "micro": micro, "data": data_state}
  checkpoint_io.save(run.block_dir(block), step, state, meta,
                     max_to_keep=int(run.config.train.keep_checkpoints))


def trainers_for(run: Run, block: int, chains: dict[int, list[Frozen]], acc_steps: int = 1):
  """One trainer per input scale: they differ only in the frozen prefix their features run."""
  return {s: step_lib.BlockTrainer(run.models(block), run.mesh, accumulate_steps=acc_steps,
                                   augment=run.augment, optimizer=run.optimizer(),
                                   prefix=[f.block for f in chain])
          for s, chain in chains.items()}


def train_block(run: Run, block: int, chains: dict[int, list[Frozen]] | list[Frozen]
                ) -> step_lib.BlockState:
  """Trains one block from scratch or from its newest checkpoint; returns its final state.

  `chains` maps each input scale the block trains at to its frozen prefix (a bare list: the one
  chain ending where it ends). The sampler draws among all (input scale, path) candidates.
  """
  if not isinstance(chains, dict):
    chains = {chains[-1].out_scale if chains else ss.STEM_SCALE: chains}
  cfg = run.config.train
  acc_steps = int(cfg.accumulate_steps)
  trainers = trainers_for(run, block, chains, acc_steps)
  trainer = next(iter(trainers.values()))
  prefix_vars = {s: tuple(f.variables for f in chain) for s, chain in chains.items()}
  candidates = [(s, p) for s in sorted(chains, reverse=True) for p in ss.candidates(block, s)]
  num_paths = int(cfg.num_paths)
  ipe = run.micro_per_epoch
  total_steps = run.optimizer_steps
  total_micro = total_steps * acc_steps

  state, micro, data_state = _restore_or_init(run, trainer, block)
  rate_at = rating_epochs(run.config)
  ended = _epoch_ended(micro, ipe, acc_steps)
  if micro < total_micro and ended in rate_at:
    # Killed during (or just before) a rating inside the block: finish it before training on.
    _rate_within(run, block, state, chains, ended)
  if micro >= total_micro:
    return state
  it = pipeline.train_iterator(run.config.data, resolution=run.dims.resolution,
                               seed=int(run.config.seed), block=block,
                               global_batch_size=int(cfg.batch_size),
                               num_epochs=int(cfg.epochs_per_block), source=run.train_source)
  if data_state is not None:
    it.set_state(data_state)
  acc = jax.tree.map(jnp.zeros_like, state.online)
  writer = metrics_lib.Writer(run.workdir)
  key = jax.random.fold_in(run.key, block)
  images = int(cfg.batch_size)
  print(f"block {block}: compiling its programs (the first steps of a block take about a minute "
        "on a CPU; the compilation cache in the workdir's jax_cache/ shortens reruns)", flush=True)
  bar = tqdm.tqdm(total=total_steps, initial=micro // acc_steps, unit="step",
                  desc=f"block {block} ({len(candidates)} candidates)", dynamic_ncols=True)
  window, t0, k = [], time.perf_counter(), micro
  stop = interrupt.StopRequest(f"block {block}").install()
  try:
    for k in range(micro, total_micro):
      batch = next(it)
      views = parallel.host_batch_to_global(batch["views"], run.mesh)
      paths = step_lib.sample_paths(candidates, num_paths, int(run.config.seed), block, k)
      acc, losses = step_lib.micro_step(trainers, state, acc, prefix_vars, views,
                                        jax.random.fold_in(key, k), paths)
      window.extend(losses)
      if (k + 1) % acc_steps:
        continue
      loss = float(np.mean(jax.device_get(window)))
      step = int(jax.device_get(state.step))
      if not math.isfinite(loss):
        done = checkpoint_io.all_steps(run.block_dir(block))
        raise TrainingError(
            f"block {block}, optimizer step {step + 1} (micro-batch {k}): the loss is {loss}. "
            f"The last good checkpoint is step {done[-1] if done else 'none'} in "
            f"{run.block_dir(block)} and is kept; lower config.train.lr or check the data, then "
            "rerun the same command to resume from it.")
      lr = schedules.learning_rate(k, base_lr=float(cfg.lr), iters_per_epoch=ipe,
                                   epochs=int(cfg.epochs_per_block),
                                   warmup_epochs=float(cfg.warmup_epochs),
                                   warmup_ratio=float(cfg.warmup_ratio))
      ema = schedules.ema_momentum(k, total=total_micro, base=float(cfg.base_ema),
                                   end=float(cfg.end_ema))
      state, acc = trainer.update(state, acc, lr, ema)
      step += 1
      elapsed = time.perf_counter() - t0
      rate = images * len(window) / num_paths / elapsed
      window, t0 = [], time.perf_counter()
      bar.update(1)
      bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.4g}", ema=f"{ema:.5f}",
                      img_s=f"{rate:.1f}")
      writer.write(block=block, step=step, micro=k + 1, loss=loss, lr=lr, ema=ema,
                   images_per_s=rate)
      epoch = _epoch_ended(k + 1, ipe, acc_steps)
      rate_now = epoch in rate_at and k + 1 < total_micro
      if (step % int(cfg.checkpoint_every_steps) == 0 or step == total_steps or rate_now
          or stop.requested):
        _save(run, block, state, k + 1, it.get_state())
        writer.flush()  # The logs hold every step up to the checkpoint a restart resumes from.
      if stop.requested and step < total_steps:
        raise stop.stopped(f"block {block}, optimizer step {step} of {total_steps}",
                           run.block_dir(block))
      if rate_now:
        bar.clear()
        _rate_within(run, block, state, chains, epoch)
        t0 = time.perf_counter()
  except KeyboardInterrupt:  # A second Ctrl-C: at once, without a checkpoint of this step.
    bar.close()
    raise interrupt.stopped_at_once(
        f"block {block}, optimizer step {k // acc_steps} of {total_steps}", run.block_dir(block),
        checkpoint_io.all_steps(run.block_dir(block))) from None
  finally:
    stop.restore()
    bar.close()
    writer.close()
  return state


def rating_epochs(config) -> set[int]:
  """Epochs (1-based) after which a block is rated: every `rating.rate_every_epochs`, and always
  after the last one, whose rating is the one kept (the prefix is frozen from those weights)."""
  epochs, every = int(config.train.epochs_per_block), int(config.rating.rate_every_epochs)
  return set(range(every, epochs + 1, every)) | {epochs}


def _epoch_ended(micro: int, per_epoch: int, acc_steps: int) -> int | None:
  """The epoch that ended within the optimizer step ending at micro-batch `micro`, if any (an
  epoch's end need not fall on an optimizer step; its rating waits for the step to finish)."""
  if micro <= 0:
    return None
  epoch = micro // per_epoch
  return epoch if epoch > (micro - acc_steps) // per_epoch else None


def _rate_within(run: Run, block: int, state, chains, epoch: int) -> None:
  """A rating inside the block (after `epoch`), unless its rank files already hold it."""
  from bossnas_jax import ratings

  def done(s):
    path = ratings.rank_file_path(run.workdir, block, s)
    return files.exists(path) and ratings.read_rank_file(path).epoch == epoch

  if not all(done(s) for s in chains):
    rate_block(run, block, state, chains, epoch=epoch)


def block_inputs(run: Run, trainer: step_lib.BlockTrainer, prefix_vars, batches, key):
  """(B, 2, ...) inputs of the block for a fixed set of 2-view batches, through the prefix."""
  return [(trainer.features(prefix_vars, b["views"], key), b.get("mask")) for b in batches]


def freeze_block(run: Run, block: int, state: step_lib.BlockState, in_scale: int, path: ss.Path,
                 chain: list[Frozen]) -> Frozen:
  """The target weights of `path` with BN statistics recalibrated over the calibration set."""
  trainer = trainers_for(run, block, {in_scale: chain})[in_scale]
  frozen = step_lib.PrefixBlock(block, in_scale, tuple(path))
  units = supernet.path_units(run.dims, block, in_scale, frozen.path)
  params = [supernet.unit_params(state.target["block"], run.dims, u) for u in units]
  pairs = [x for x, _ in block_inputs(run, trainer, tuple(f.variables for f in chain),
                                      run.calibration_set(), run.calibration_key(block))]
  stats = calibration.calibrate_units(run.dims, run.dtype, run.mesh, units, params, pairs)
  variables = {"params": supernet.path_variables({"params": state.target["block"]}, run.dims,
                                                  block, in_scale, frozen.path)["params"],
               "batch_stats": stats}
  return Frozen(frozen, parallel.replicate(variables, run.mesh))


def _frozen_dir(run: Run, block: int, in_scale: int, path: ss.Path) -> str:
  return os.path.join(run.workdir, "prefix",
                      f"block{block}_in{ss.SCALE_NAMES[in_scale]}_{ss.format_path(path)}")


def save_frozen(run: Run, frozen: Frozen) -> str:
  b = frozen.block
  directory = _frozen_dir(run, b.block, b.in_scale, b.path)
  checkpoint_io.save(directory, 0, frozen.variables,
                     {"block": b.block, "in_scale": b.in_scale, "path": ss.format_path(b.path)})
  return directory


def load_frozen(directory: str, mesh) -> Frozen:
  variables, meta, _ = checkpoint_io.restore(directory)
  b = step_lib.PrefixBlock(int(meta["block"]), int(meta["in_scale"]),
                           tuple(int(c) for c in meta["path"]))
  return Frozen(b, parallel.replicate(variables, mesh))


def rate_block(run: Run, block: int, state: step_lib.BlockState,
               chains: dict[int, list[Frozen]], epoch: int | None = None
               ) -> dict[int, dict[ss.Path, float]]:
  """Rates every candidate at every input scale and writes the rank files
  (docs/method.md#rating-design).

  `epoch` (default: the block's last) is recorded in the rank files; each rating replaces the
  previous one there and keeps a copy under ratings/history/.
  """
  from bossnas_jax import rating, ratings  # Rating pulls in the search's cost tables.

  trainers = trainers_for(run, block, chains)
  epochs = int(run.config.train.epochs_per_block) if epoch is None else int(epoch)
  rating_set = pipeline.rating_set(
      run.config.data, resolution=run.dims.resolution, seed=int(run.config.seed),
      rating_index=block, global_batch_size=calibration_batch(run.config), mesh=run.mesh)
  out = {}
  for s, chain in sorted(chains.items(), reverse=True):
    prefix_vars = tuple(f.variables for f in chain)
    key = run.calibration_key(block)
    calib = [x for x, _ in block_inputs(run, trainers[s], prefix_vars, run.calibration_set(),
                                        key)]
    rated = block_inputs(run, trainers[s], prefix_vars, rating_set,
                         jax.random.fold_in(key, 1))
    rater = rating.Rater(trainers[s].models, run.mesh, state, s, calib, rated)
    prefix = "-".join(ss.format_path(f.block.path) for f in chain)
    cands = list(ss.candidates(block, s))
    progress = {"block": block, "in_scale": s, "prefix": prefix, "epochs": epochs}
    scores = rating.rate(rater, cands, workdir=run.workdir, block=block, progress_key=progress,
                         desc=f"rating block {block} from {ss.SCALE_NAMES[s]}x"
                              f"{ss.SCALE_NAMES[s]} ({len(cands)} candidates)")
    if jax.process_index() == 0:
      path = ratings.write_rank_file(run.workdir, block, s, prefix, scores, rating_index=block,
                                     epoch=epochs, num_images=rating_set.num_images,
                                     dims=run.dims)
      history = os.path.join(ratings.ratings_dir(run.workdir), "history")
      name = os.path.basename(path).replace(".json", f"_epoch{epochs}.json")
      files.copy(path, os.path.join(history, name))
    rating.clear_progress(run.workdir, block, s)
    out[s] = scores
  return out


def next_chains(run: Run, block: int, state, chains, scores) -> dict[int, list[Frozen]]:
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
    save_frozen(run, frozen)
    out[d] = chains[s] + [frozen]
    print(f"block {block}: best path ending at {ss.SCALE_NAMES[d]}x{ss.SCALE_NAMES[d]} is "
          f"{ss.format_path(p)} (score {v:.4f}, input {ss.SCALE_NAMES[s]}x{ss.SCALE_NAMES[s]})",
          flush=True)
  return out


def _progress_file(run: Run) -> str:
  return os.path.join(run.workdir, "blocks_done.json")


def train_all_blocks(run: Run) -> dict[int, list[Frozen]]:
  """Blocks 0..3 in turn: train, rate, and freeze the best path ending at every scale."""
  done = files.read_json(_progress_file(run)) if files.exists(_progress_file(run)) else {}
  chains: dict[int, list[Frozen]] = {ss.STEM_SCALE: []}
  for block in range(ss.NUM_BLOCKS):
    if str(block) in done:
      chains = {int(d): [load_frozen(p, run.mesh) for p in dirs]
                for d, dirs in done[str(block)].items()}
      print(f"block {block}: finished earlier; carries scales "
            f"{', '.join(ss.SCALE_NAMES[d] for d in sorted(chains, reverse=True))}", flush=True)
      continue
    state = train_block(run, block, chains)
    scores = rate_block(run, block, state, chains)
    if block + 1 < ss.NUM_BLOCKS:
      chains = next_chains(run, block, state, chains, scores)
    done[str(block)] = {str(d): [_frozen_dir(run, f.block.block, f.block.in_scale, f.block.path)
                                 for f in chain] for d, chain in chains.items()}
    if jax.process_index() == 0:
      files.write_json(_progress_file(run), done, indent=1)
  return chains


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes config.json, or checks that the workdir's run used a compatible config."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json_best_effort())
  if files.exists(path):
    saved = files.read_json(path)
    # Fields that do not change what is computed may differ between a run and its restart.
    free = {("train", "log_every_steps"), ("train", "checkpoint_every_steps"),
            ("train", "keep_checkpoints"), ("data", "worker_count"), ("data", "data_dir"),
            ("search",)}
    diffs = [k for k in _diff(saved, current) if not any(k[:len(f)] == f for f in free)]
    if diffs:
      shown = "; ".join(f"{'.'.join(k)}: {_get(saved, k)!r} -> {_get(current, k)!r}"
                        for k in diffs[:5])
      raise ValueError(
          f"{workdir} holds a run with a different config ({shown}). Resume it with the same "
          "config, or use a new --workdir.")
    return
  files.makedirs(workdir)
  # Every host of a multi-host run writes the same file, atomically, so that no host reads
  # another's half-written config.
  files.write_json(path, current, indent=2, sort_keys=True)


def _diff(a, b, prefix=()):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      yield from _diff(a.get(k), b.get(k), prefix + (k,))
  elif a != b:
    yield prefix


def _get(d, keys):
  for k in keys:
    d = d.get(k) if isinstance(d, dict) else None
  return d
