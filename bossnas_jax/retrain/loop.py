"""Supervised retraining of a BossNet (docs/method.md#retraining-recipe, #retrain-and-evaluate):
resumable, evaluated every epoch.

    results = train_and_evaluate(config, workdir)

Every epoch ends with an evaluation of the raw and of the EMA model on config.data.eval_split
(official eval preprocessing): top-1, top-5, NLL and ECE, written to metrics.jsonl / TensorBoard;
the best top-1 over both models and all epochs is tracked, as DeiT's `max_accuracy`. A checkpoint
is written every `train.checkpoint_every_steps` steps and after every epoch's evaluation; rerunning
the same command resumes from the newest checkpoint that verifies (bit for bit the same run on
CPU). The workdir layout is in `checkpoints.py`.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
import tqdm

from bossnas_jax.data import batching, classification, mixing
from bossnas_jax.infra import checkpoint_io, errors, files, interrupt, parallel
from bossnas_jax.models import bossnet, cost
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.models import checkpoint as model_checkpoint
from bossnas_jax.retrain import checkpoints, optim
from bossnas_jax.retrain import state as state_lib
from bossnas_jax.retrain import step as step_lib
from bossnas_jax.train import loop as block_loop
from bossnas_jax.train import metrics as metrics_lib

RESULTS = "results.json"
EXPORTS = {"raw": "bossnet_raw", "ema": "bossnet_ema"}




def check_config(config: ml_collections.ConfigDict) -> None:
  """Validates the values the run uses before any work starts."""
  m, t, e = config.model, config.train, config.eval
  try:
    bs.check_resolution(int(m.resolution))
  except bs.BossNetSpecError as err:
    raise errors.ConfigError(f"config.model.resolution: {err}") from None
  errors.require(m.compute_dtype in parallel.COMPUTE_DTYPES, "model.compute_dtype",
                 m.compute_dtype, " or ".join(repr(d) for d in parallel.COMPUTE_DTYPES))
  errors.require(0 <= float(m.drop_path_rate) < 1, "model.drop_path_rate", m.drop_path_rate,
                 "[0, 1)")
  for f in ("batch_size", "epochs", "checkpoint_every_steps", "keep_checkpoints",
            "log_every_steps"):
    errors.require(int(t[f]) >= 1, f"train.{f}", t[f], "an integer >= 1")
  for f in ("base_lr", "eps"):
    errors.require(float(t[f]) > 0, f"train.{f}", t[f], "a positive number")
  for f in ("warmup_lr", "min_lr", "weight_decay"):
    errors.require(float(t[f]) >= 0, f"train.{f}", t[f], ">= 0")
  errors.require(0 <= float(t.warmup_epochs) < int(t.epochs), "train.warmup_epochs",
                 t.warmup_epochs, f"0 <= warmup_epochs < train.epochs = {t.epochs}")
  errors.require(0 <= float(t.ema_decay) < 1, "train.ema_decay", t.ema_decay, "0 <= decay < 1")
  for f in ("batch_size", "every_epochs", "calibration_bins"):
    errors.require(int(e[f]) >= 1, f"eval.{f}", e[f], "an integer >= 1")
  try:
    mixing.check_config(config.augment)
  except ValueError as err:
    raise errors.ConfigError(str(err)) from None
  parallel.check_batch(int(t.batch_size), "train.batch_size")
  parallel.check_batch(int(e.batch_size), "eval.batch_size")


class Run:
  """What one retraining run computes with: network, optimizer, compiled steps, data sizes."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    check_config(config)
    self.config, self.workdir = config, workdir
    t = config.train
    self.mesh = parallel.data_mesh()
    self.num_classes = int(classification.num_classes(config.data))
    self.network = state_lib.network_config(config, self.num_classes)
    self.resolution = int(config.model.resolution)
    self.dtype = parallel.compute_dtype(config.model.compute_dtype)
    self.model = bossnet.BossNet(self.network, self.dtype)
    self.num_train = int(classification.num_examples(config.data, config.data.train_split))
    self.steps_per_epoch = batching.steps_per_epoch(
        self.num_train, int(t.batch_size), f"{config.data.name}:{config.data.train_split}")
    self.total_steps = int(t.epochs) * self.steps_per_epoch
    self.tx, self.schedule = optim.from_config(t, steps_per_epoch=self.steps_per_epoch)
    self.programs = step_lib.Programs(self.model, self.tx, self.mesh, config.augment,
                                      self.num_classes, float(t.ema_decay),
                                      int(config.eval.calibration_bins))
    key = jax.random.key(int(config.seed), impl="rbg")
    self.init_key, self.step_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)

  def init_state(self) -> state_lib.TrainState:
    return state_lib.init_state(self.model, self.tx, self.init_key, self.resolution)

  def describe(self) -> str:
    c = cost.bossnet_cost(self.network, self.resolution)
    t = self.config.train
    peak = optim.peak_learning_rate(float(t.base_lr), int(t.batch_size))
    stages = bs.layout(self.network)
    return (f"retrain: {jax.process_count()} host(s), {jax.device_count()} "
            f"{jax.default_backend()} device(s), compute dtype {np.dtype(self.dtype).name}\n"
            f"network {self.config.model.arch} ({len(stages)} blocks, stages "
            f"{[len(s) for s in self.network.encoding]}, width x{self.network.width_multiplier:g}"
            f"): {c.madds / 1e6:,.1f}M MAdds, {c.params / 1e6:.3f}M params at "
            f"{self.resolution}x{self.resolution}, {self.num_classes} classes\n"
            f"{self.num_train:,} training images, {self.steps_per_epoch} steps of "
            f"{t.batch_size} per epoch, {self.total_steps} steps, peak lr {peak:.3g}")

  # -- evaluation -------------------------------------------------------------------------------

  def evaluate(self, state: state_lib.TrainState, desc: str = "eval") -> dict[str, dict]:
    """Raw and EMA model on the eval split, one pass over the data for both."""
    c = self.config
    it = classification.eval_iterator(c.data, split=c.data.eval_split, resolution=self.resolution,
                                      global_batch_size=int(c.eval.batch_size))
    totals: dict[str, dict] = {}
    variables = {"raw": state.variables(False), "ema": state.variables(True)}
    for batch in tqdm.tqdm(it, desc=desc, unit="batch", leave=False, dynamic_ncols=True):
      images = parallel.host_batch_to_global(batch["image"], self.mesh)
      labels = parallel.host_batch_to_global(batch["label"], self.mesh)
      valid = parallel.host_batch_to_global(np.asarray(batch["valid"], bool), self.mesh)
      for name, v in variables.items():
        sums = jax.tree.map(lambda x: np.asarray(x, np.float64),
                            jax.device_get(self.programs.eval_step(v, images, labels, valid)))
        totals[name] = sums if name not in totals else jax.tree.map(np.add, totals[name], sums)
    if not totals:
      raise errors.ConfigError(f"{c.data.name}:{c.data.eval_split} gave no evaluation batch.")
    return {name: step_lib.eval_summary(t) for name, t in totals.items()}


def _best(history: list[dict]) -> dict:
  best = {"top1": -1.0}
  for h in history:
    for name in ("raw", "ema"):
      if h[name]["top1"] > best["top1"]:
        best = {"top1": h[name]["top1"], "model": name, "epoch": h["epoch"]}
  return best


def _restore_or_init(run: Run):
  """(replicated state, meta) from the newest verified checkpoint, or a fresh state."""
  directory = checkpoints.checkpoint_dir(run.workdir)
  resumed = checkpoint_io.resume(directory, run.init_state, run.mesh)
  if resumed is None:
    return parallel.replicate(run.init_state(), run.mesh), {"epoch": 0, "data": None,
                                                             "history": []}
  state, meta, step = resumed
  checkpoints.check_kind(run.workdir, meta, step)
  if meta.get("network") != run.network.to_dict():
    raise errors.ConfigError(f"{directory} step {step} holds another network; use a new --workdir.")
  print(f"resumed from step {step} (epoch {meta['epoch']}) of {directory}", flush=True)
  return state, meta


def _finish(run: Run, state, history: list[dict]) -> dict:
  """results.json and the single-model exports of the final raw and EMA weights."""
  last = history[-1]
  results = {"architecture": str(run.config.model.arch), "network": run.network.to_dict(),
             "resolution": run.resolution, "epochs": int(run.config.train.epochs),
             "steps": run.total_steps, "raw": last["raw"], "ema": last["ema"],
             "best": _best(history)}
  for name, folder in EXPORTS.items():
    path = os.path.join(run.workdir, folder)
    if jax.process_index() == 0:
      files.rmtree(path)  # A rerun of a finished run rewrites the exports.
    # Host copies: a checkpoint of arrays laid out on this mesh would only restore on the same
    # device topology; numpy arrays restore anywhere (one CPU, another accelerator count).
    model_checkpoint.save(path, jax.device_get(state.variables(name == "ema")), {
        "kind": "bossnet", "config": run.network.to_dict(), "source": files.absolute(run.workdir),
        "step": run.total_steps, "weights": name})
  if jax.process_index() == 0:
    files.write_json(os.path.join(run.workdir, RESULTS), results, indent=1)
  return results


def _format_eval(epoch: int, ev: dict) -> str:
  r, e = ev["raw"], ev["ema"]
  return (f"epoch {epoch}: raw top-1 {r['top1']:.2f}% top-5 {r['top5']:.2f}% ECE {r['ece']:.2f}% "
          f"| EMA top-1 {e['top1']:.2f}% top-5 {e['top5']:.2f}% ECE {e['ece']:.2f}%")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_after_steps: int | None = None) -> dict:
  """Trains (or resumes) and evaluates; returns the final results (see results.json).

  `stop_after_steps` ends the call after that many steps of this call (a checkpoint is written
  there), as if the job were killed: tests use it to check that a resumed run equals an
  uninterrupted one.
  """
  files.check_workdir(workdir)
  run = Run(config, workdir)
  block_loop.save_config(config, workdir)
  print(run.describe(), flush=True)
  state, meta = _restore_or_init(run)
  history = list(meta["history"])
  start = int(jax.device_get(state.step))
  t = config.train
  spe, total = run.steps_per_epoch, run.total_steps
  if start >= total:
    if files.exists(os.path.join(workdir, RESULTS)):
      return files.read_json(os.path.join(workdir, RESULTS))
    return _finish(run, state, history)

  it = classification.train_iterator(config.data, resolution=run.resolution,
                                     seed=int(config.seed), global_batch_size=int(t.batch_size),
                                     num_epochs=int(t.epochs))
  if meta["data"] is not None:
    it.set_state(meta["data"])
  writer = metrics_lib.Writer(workdir)
  log_every = int(t.log_every_steps)
  bar = tqdm.tqdm(total=total, initial=start, unit="step", desc="retrain", dynamic_ncols=True)
  window, t0, images_seen = [], time.perf_counter(), 0
  end = total if stop_after_steps is None else min(total, start + stop_after_steps)

  def save(epoch: int):
    checkpoints.save(workdir, state, {"epoch": epoch, "data": it.get_state(), "history": history,
                                      "network": run.network.to_dict()},
                     int(t.keep_checkpoints))
    writer.flush()  # The logs hold every step up to the checkpoint a restart resumes from.

  stop = interrupt.StopRequest("the retraining").install()
  try:
    for k in range(start, end):
      batch = next(it)
      images = parallel.host_batch_to_global(batch["image"], run.mesh)
      labels = parallel.host_batch_to_global(batch["label"], run.mesh)
      state, metrics = run.programs.train_step(state, images, labels, run.step_key)
      window.append(metrics["loss"])
      images_seen += int(t.batch_size)
      bar.update(1)
      step, epoch_end = k + 1, (k + 1) % spe == 0
      if step % log_every == 0 or epoch_end or step == end:
        losses = np.asarray(jax.device_get(window), np.float64)
        loss = float(losses.mean())
        if not np.all(np.isfinite(losses)):
          done = checkpoint_io.all_steps(checkpoints.checkpoint_dir(workdir))
          raise errors.TrainingError(
              f"step {step}: the loss is {loss}. The last good checkpoint is step "
              f"{done[-1] if done else 'none'} in {checkpoints.checkpoint_dir(workdir)} and is "
              "kept; lower config.train.base_lr (or set train.clip_grad) or check the data, then "
              "rerun the same command to resume from it.")
        lr = float(run.schedule(k))
        rate = images_seen / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.1f}")
        writer.write(step=step, loss=loss, lr=lr, images_per_s=rate,
                     grad_norm=float(jax.device_get(metrics["grad_norm"])),
                     epoch=step / spe)
        window, t0, images_seen = [], time.perf_counter(), 0
      if epoch_end:
        epoch = step // spe
        if epoch % int(config.eval.every_epochs) == 0 or step == total:
          ev = run.evaluate(state, desc=f"eval epoch {epoch}")
          history.append({"epoch": epoch, "step": step, **ev})
          writer.write(step=step, epoch=epoch,
                       **{f"eval/{n}/{m}": float(v) for n, r in ev.items()
                          for m, v in r.items() if m != "count"})
          best = _best(history)
          bar.write(_format_eval(epoch, ev) + f" | best {best['top1']:.2f}% ({best['model']}, "
                    f"epoch {best['epoch']})")
          t0 = time.perf_counter()  # Evaluation time does not count as training speed.
        save(epoch)
      elif step % int(t.checkpoint_every_steps) == 0 or step == end or stop.requested:
        save(step // spe)
      if stop.requested and step < total:
        raise stop.stopped(f"step {step} of {total}", checkpoints.checkpoint_dir(workdir))
  except KeyboardInterrupt:  # A second Ctrl-C: at once, without a checkpoint of this step.
    bar.close()
    directory = checkpoints.checkpoint_dir(workdir)
    raise interrupt.stopped_at_once(f"step {int(jax.device_get(state.step))} of {total}",
                                    directory, checkpoint_io.all_steps(directory)) from None
  finally:
    stop.restore()
    bar.close()
    writer.close()
  if end < total:
    return {"stopped_at_step": end}
  results = _finish(run, state, history)
  b = results["best"]
  print(f"final: {_format_eval(history[-1]['epoch'], history[-1])}\nbest top-1 {b['top1']:.2f}% "
        f"({b['model']} model, epoch {b['epoch']}); results in "
        f"{os.path.join(workdir, RESULTS)}", flush=True)
  return results
