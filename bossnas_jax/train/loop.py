"""Block-wise training (SPEC III.3): blocks 0..3 in turn, resumable at any checkpoint.

For block b: build the state (or restore the newest verified checkpoint), run the block's epochs of
ensemble bootstrapping, then freeze the chosen path of block b as the next block's prefix: its
target weights with BN statistics recalibrated exactly on the calibration set (D3, D6).

Layout of a workdir:
  config.json                 the run's config (a restart with an incompatible one is refused)
  checkpoints/block{b}/{step} Orbax checkpoints of block b's state, with the data iterator state
  prefix/block{b}/0           the frozen path of block b (variables and its path string)
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

from bossnas_jax import calibration, checkpoint_io, parallel
from bossnas_jax import search_space as ss
from bossnas_jax.data import device_augment, pipeline
from bossnas_jax.models import supernet
from bossnas_jax.train import lars as lars_lib
from bossnas_jax.train import metrics as metrics_lib
from bossnas_jax.train import schedules
from bossnas_jax.train import step as step_lib

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
  """A run that cannot go on (a NaN loss, say); the message says where and what is kept."""


@dataclasses.dataclass
class Frozen:
  """A finished block: its chosen path and the variables the next blocks run it with."""

  block: step_lib.PrefixBlock
  variables: Any


def compute_dtype(name: str):
  """D10: 'auto' is float32 on CPU and bfloat16 on accelerators."""
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

  def prefix_dir(self, block: int) -> str:
    return os.path.join(self.workdir, "prefix", f"block{block}")

  def optimizer(self):
    t = self.config.train
    return lars_lib.lars(float(t.momentum), float(t.weight_decay), float(t.lars_eta))

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
    _set_aside_newer(directory, step)
    print(f"block {block}: resumed from optimizer step {step} ({directory})", flush=True)
    return state, int(meta["micro"]), meta["data"]
  return parallel.replicate(init(), run.mesh), 0, None


def _set_aside_newer(directory: str, step: int) -> None:
  """Moves steps newer than the restored one (they failed to verify) out of the manager's folder,
  so that the resumed run can write those step numbers again; nothing is deleted."""
  for s in checkpoint_io.all_steps(directory):
    if s > step:
      dest = os.path.join(directory + ".corrupt", f"{s}-{int(time.time())}")
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      os.replace(os.path.join(directory, str(s)), dest)
      print(f"checkpoint step {s} of {directory} failed verification; moved to {dest}",
            flush=True)


def _save(run: Run, block: int, state, micro: int, data_state) -> None:
  step = int(jax.device_get(state.step))
  meta = {"block": block, "micro": micro, "data": data_state}
  checkpoint_io.save(run.block_dir(block), step, state, meta,
                     max_to_keep=int(run.config.train.keep_checkpoints))


def train_block(run: Run, block: int, prefix: list[Frozen]) -> step_lib.BlockState:
  """Trains one block from scratch or from its newest checkpoint; returns its final state."""
  cfg = run.config.train
  acc_steps = int(cfg.accumulate_steps)
  trainer = step_lib.BlockTrainer(
      run.models(block), run.mesh, accumulate_steps=acc_steps, augment=run.augment,
      optimizer=run.optimizer(), prefix=[f.block for f in prefix])
  prefix_vars = tuple(f.variables for f in prefix)
  candidates = [(trainer.in_scale, p) for p in ss.candidates(block, trainer.in_scale)]
  num_paths = int(cfg.num_paths)
  ipe = run.micro_per_epoch
  total_steps = run.optimizer_steps
  total_micro = total_steps * acc_steps

  state, micro, data_state = _restore_or_init(run, trainer, block)
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
  bar = tqdm.tqdm(total=total_steps, initial=micro // acc_steps, unit="step",
                  desc=f"block {block} ({len(candidates)} candidates)", dynamic_ncols=True)
  window, t0 = [], time.perf_counter()
  try:
    for k in range(micro, total_micro):
      batch = next(it)
      views = parallel.host_batch_to_global(batch["views"], run.mesh)
      paths = step_lib.sample_paths(candidates, num_paths, int(run.config.seed), block, k)
      acc, losses = trainer.micro_step(state, acc, prefix_vars, views,
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
      if step % int(cfg.checkpoint_every_steps) == 0 or step == total_steps:
        _save(run, block, state, k + 1, it.get_state())
  finally:
    bar.close()
    writer.close()
  return state


def freeze_block(run: Run, block: int, state: step_lib.BlockState, path: ss.Path,
                 prefix: list[Frozen]) -> Frozen:
  """The target weights of `path` with BN statistics recalibrated over the calibration set."""
  trainer = step_lib.BlockTrainer(
      run.models(block), run.mesh, accumulate_steps=1, augment=run.augment,
      optimizer=run.optimizer(), prefix=[f.block for f in prefix])
  in_scale = trainer.in_scale
  frozen = step_lib.PrefixBlock(block, in_scale, tuple(path))
  prefix_vars = tuple(f.variables for f in prefix)
  units = supernet.path_units(run.dims, block, in_scale, frozen.path)
  params = [supernet.unit_params(state.target["block"], run.dims, u) for u in units]
  key = jax.random.fold_in(run.key, 10_000 + block)
  pairs = (trainer.features(prefix_vars, b["views"], key) for b in run.calibration_set())
  stats = calibration.calibrate_units(run.dims, run.dtype, run.mesh, units, params, pairs)
  variables = {"params": supernet.path_variables({"params": state.target["block"]}, run.dims,
                                                  block, in_scale, frozen.path)["params"],
               "batch_stats": stats}
  return Frozen(frozen, parallel.replicate(variables, run.mesh))


def save_frozen(run: Run, frozen: Frozen) -> None:
  b = frozen.block
  checkpoint_io.save(run.prefix_dir(b.block), 0, frozen.variables,
                     {"block": b.block, "in_scale": b.in_scale, "path": ss.format_path(b.path)})


def load_frozen(run: Run, block: int) -> Frozen | None:
  directory = run.prefix_dir(block)
  if not checkpoint_io.all_steps(directory):
    return None
  variables, meta, _ = checkpoint_io.restore(directory)
  b = step_lib.PrefixBlock(int(meta["block"]), int(meta["in_scale"]),
                           tuple(int(c) for c in meta["path"]))
  return Frozen(b, parallel.replicate(variables, run.mesh))


def train_all_blocks(run: Run, prefix_arch: ss.Architecture) -> list[Frozen]:
  """Blocks 0..3 in turn; the path of block b that the next block builds on is
  `prefix_arch.paths[b]` (the rating issue replaces this with the rated choice)."""
  frozen: list[Frozen] = []
  for block in range(ss.NUM_BLOCKS):
    done = load_frozen(run, block)
    if done is not None:
      print(f"block {block}: finished earlier, path {ss.format_path(done.block.path)}",
            flush=True)
      frozen.append(done)
      continue
    state = train_block(run, block, frozen)
    f = freeze_block(run, block, state, prefix_arch.paths[block], frozen)
    save_frozen(run, f)
    frozen.append(f)
  return frozen


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes config.json, or checks that the workdir's run used a compatible config."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
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
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w") as f:
    json.dump(current, f, indent=2, sort_keys=True)


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
