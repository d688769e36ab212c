"""Block training (docs/method.md#block-training): one block's epochs of ensemble bootstrapping,
resumable at any checkpoint. The main job (`main_job.py`) runs the blocks in turn, rates them and
freezes their prefixes.

For block b: build the state (or restore the newest verified checkpoint) and train it over the
candidates of every input scale the previous block hands on, each behind its frozen prefix
(`Frozen`: target weights with exactly recalibrated BN statistics, docs/method.md#d3, #d6).
`train_block` hands the state to a rating callback after the epochs it is asked to (ratings
inside a block), checkpointing first so that a rating killed midway resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Collection
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from bossnas_jax import search_space as ss
from bossnas_jax.data import batching, device_augment, pipeline
from bossnas_jax.infra import checkpoint_io, errors, files, interrupt, parallel
from bossnas_jax.models import siamese
from bossnas_jax.train import lars as lars_lib
from bossnas_jax.train import metrics as metrics_lib
from bossnas_jax.train import schedules
from bossnas_jax.train import step as step_lib


@dataclasses.dataclass
class Frozen:
  """A finished block: its chosen path and the variables the next blocks run it with."""

  block: step_lib.PrefixBlock
  variables: Any

  @property
  def out_scale(self) -> int:
    return ss.output_scale(self.block.path)


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
    source = batching.open_split(config.data, config.data.train_split)
    return cls(config=config, workdir=workdir, mesh=parallel.data_mesh(), dims=dims,
               dtype=parallel.compute_dtype(config.model.compute_dtype),
               key=jax.random.key(int(config.seed), impl="rbg"), train_source=source)

  def models(self, block: int) -> siamese.Models:
    m = self.config.model
    return siamese.Models(self.dims, block, int(m.neck_hidden), int(m.proj_dim),
                          int(m.pred_hidden), self.dtype)

  @functools.cached_property
  def augment(self):
    d = self.config.data
    return functools.partial(device_augment.device_augment, blur_prob=tuple(d.blur_prob),
                             solarize_prob=tuple(d.solarize_prob), dtype=self.dtype)

  @property
  def micro_per_epoch(self) -> int:
    return batching.steps_per_epoch(len(self.train_source), int(self.config.train.batch_size))

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
  key = jax.random.fold_in(run.key, block)
  init = functools.partial(step_lib.init_state, trainer.models, key, trainer.optimizer)
  directory = run.block_dir(block)
  resumed = checkpoint_io.resume(directory, init, run.mesh)
  if resumed is None:
    return parallel.replicate(init(), run.mesh), 0, None
  state, meta, step = resumed
  print(f"block {block}: resumed from optimizer step {step} ({directory})", flush=True)
  return state, int(meta["micro"]), meta["data"]


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


def as_chains(chains: dict[int, list[Frozen]] | list[Frozen]) -> dict[int, list[Frozen]]:
  """{input scale: frozen prefix}; a bare list is the one chain, at the scale where it ends."""
  if isinstance(chains, dict):
    return chains
  return {chains[-1].out_scale if chains else ss.STEM_SCALE: chains}


def train_block(run: Run, block: int, chains: dict[int, list[Frozen]] | list[Frozen], *,
                rate_at: Collection[int] = (),
                rate: Callable[[int, siamese.BlockState], None] | None = None
                ) -> siamese.BlockState:
  """Trains one block from scratch or from its newest checkpoint; returns its final state.

  `chains` maps each input scale the block trains at to its frozen prefix (`as_chains`). The
  sampler draws among all (input scale, path) candidates. After each epoch in `rate_at` but the
  last, `rate(epoch, state)` runs (a rating inside the block); it must skip a rating it finished
  before, since a run killed during one repeats the call when it resumes.
  """
  chains = as_chains(chains)
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
  rate_at = frozenset(rate_at) if rate is not None else frozenset()
  ended = _epoch_ended(micro, ipe, acc_steps)
  if micro < total_micro and ended in rate_at:
    # Killed during (or just before) a rating inside the block: finish it before training on.
    rate(ended, state)
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
        raise errors.TrainingError(
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
      speed = images * len(window) / num_paths / elapsed
      window, t0 = [], time.perf_counter()
      bar.update(1)
      bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.4g}", ema=f"{ema:.5f}",
                      img_s=f"{speed:.1f}")
      writer.write(block=block, step=step, micro=k + 1, loss=loss, lr=lr, ema=ema,
                   images_per_s=speed)
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
        rate(epoch, state)
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


def _epoch_ended(micro: int, per_epoch: int, acc_steps: int) -> int | None:
  """The epoch that ended within the optimizer step ending at micro-batch `micro`, if any (an
  epoch's end need not fall on an optimizer step; its rating waits for the step to finish)."""
  if micro <= 0:
    return None
  epoch = micro // per_epoch
  return epoch if epoch > (micro - acc_steps) // per_epoch else None


def block_inputs(run: Run, trainer: step_lib.BlockTrainer, prefix_vars, batches, key):
  """(B, 2, ...) inputs of the block for a fixed set of 2-view batches, through the prefix."""
  return [(trainer.features(prefix_vars, b["views"], key), b.get("mask")) for b in batches]


def frozen_dir(run: Run, block: int, in_scale: int, path: ss.Path) -> str:
  return os.path.join(run.workdir, "prefix",
                      f"block{block}_in{ss.SCALE_NAMES[in_scale]}_{ss.format_path(path)}")


def save_frozen(run: Run, frozen: Frozen) -> str:
  b = frozen.block
  directory = frozen_dir(run, b.block, b.in_scale, b.path)
  checkpoint_io.save(directory, 0, frozen.variables,
                     {"block": b.block, "in_scale": b.in_scale, "path": ss.format_path(b.path)})
  return directory


def load_frozen(directory: str, mesh) -> Frozen:
  variables, meta, _ = checkpoint_io.restore(directory)
  b = step_lib.PrefixBlock(int(meta["block"]), int(meta["in_scale"]),
                           tuple(int(c) for c in meta["path"]))
  return Frozen(b, parallel.replicate(variables, mesh))


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes config.json, or checks that the workdir's run used a compatible config."""
  path = os.path.join(workdir, files.CONFIG_JSON)
  current = json.loads(config.to_json_best_effort())
  if files.exists(path):
    saved = files.read_json(path)
    # Fields that do not change what is computed may differ between a run and its restart.
    # (train.log_every_steps: only retraining reads it; old block-training configs have it.)
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
