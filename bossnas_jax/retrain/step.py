"""Pure retraining and evaluation steps, compiled as `jax.jit(jax.shard_map(...))` over 'data'.

Train step, per device (its slice of the global batch, as one GPU of DeiT's DDP run sees it):
  1. the batch augmentation of `data.mixing.train_inputs` (random erasing, mixup or cutmix, label
     smoothing) on the local batch with the device's own key, so each device mixes within its own
     images as timm's per-GPU Mixup does;
  2. forward in train mode: BatchNorm statistics over the local batch (no axis_name: per-device
     BN, as PyTorch's BN under DDP), drop-path with the device's key;
  3. soft-target cross-entropy (the official SoftTargetCrossEntropy), gradient averaged over
     devices (DDP's mean), AdamW, then the model EMA of parameters and BN statistics (timm's
     ModelEma after every optimizer step).
Running BN statistics are averaged over devices after each step so that every device holds the
same state (DDP instead broadcasts rank 0's buffers; the average uses every device's batches).

Eval step, per device: eval-mode forward, then top-1/top-5 hits, summed NLL and the calibration
bins of `metrics.calibration_sums`, all summed over the mesh: exact totals, whatever the device
count, with padded rows (`valid` False) ignored.

Randomness: the step key is fold_in(fold_in(run key, step), device index), so a resumed run draws
exactly what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from bossnas_jax.data import mixing, normalize
from bossnas_jax.infra import parallel
from bossnas_jax.infra.parallel import BATCH
from bossnas_jax.models import bossnet
from bossnas_jax.retrain import metrics
from bossnas_jax.retrain.state import TrainState, ema_update


def soft_target_cross_entropy(logits, targets):
  """mean_b sum_c -targets[b, c] * log_softmax(logits)[b, c], in float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.sum(-targets.astype(jnp.float32) * logp, axis=-1))


def step_key(key, step, device_index):
  return jax.random.fold_in(jax.random.fold_in(key, step), device_index)


@dataclasses.dataclass(frozen=True)
class Programs:
  """The compiled train and eval steps of one network on one mesh."""

  model: bossnet.BossNet
  tx: optax.GradientTransformation
  mesh: Any
  augment: Any            # config.augment (read by data.mixing)
  num_classes: int
  ema_decay: float
  num_bins: int = metrics.NUM_BINS

  def __post_init__(self):
    object.__setattr__(self, "train_step", self._build_train())
    object.__setattr__(self, "eval_step", self._build_eval())

  # -- training ---------------------------------------------------------------------------------

  def _per_device_train(self, state: TrainState, images, labels, key):
    n = jax.lax.axis_size(parallel.AXIS)
    key = step_key(key, state.step, jax.lax.axis_index(parallel.AXIS))
    mix_key, drop_key = jax.random.split(key)
    x, targets = mixing.train_inputs(mix_key, images, labels, self.augment, self.num_classes)

    def loss_fn(params):
      logits, new = self.model.apply(
          {"params": params, "batch_stats": state.batch_stats}, x, train=True,
          mutable=["batch_stats"], rngs={"dropout": drop_key})
      return soft_target_cross_entropy(logits, targets), new["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # The gradient of replicated parameters inside shard_map comes back summed over the mesh (the
    # transpose of broadcasting them to every device is a psum): divide for DDP's mean.
    grads = jax.tree.map(lambda g: g / n, grads)
    stats = jax.lax.pmean(stats, parallel.AXIS)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state,
        ema_params=ema_update(state.ema_params, params, self.ema_decay),
        ema_batch_stats=ema_update(state.ema_batch_stats, stats, self.ema_decay))
    metrics = {"loss": jax.lax.pmean(loss, parallel.AXIS),
               "grad_norm": optax.tree.norm(grads)}
    return new_state, metrics

  def _build_train(self):
    fn = jax.shard_map(self._per_device_train, mesh=self.mesh,
                       in_specs=(P(), BATCH, BATCH, P()), out_specs=(P(), P()))
    # The old state is dead after the step: donating it halves the state's peak memory.
    return jax.jit(fn, donate_argnums=0)

  # -- evaluation -------------------------------------------------------------------------------

  def _per_device_eval(self, variables, images, labels, valid):
    x = normalize.normalize_images(images)
    logits = self.model.apply(variables, x, train=False).astype(jnp.float32)
    labels = jnp.where(valid, labels, -1)
    hits = metrics.topk_correct(logits, labels, (1, 5))
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(labels, 0)[:, None],
                               axis=-1)[:, 0]
    sums = {"count": jnp.sum(valid.astype(jnp.float32)),
            "top1": hits[1].astype(jnp.float32), "top5": hits[5].astype(jnp.float32),
            "nll": jnp.sum(jnp.where(valid, nll, 0.0)),
            "bins": metrics.calibration_sums(logits, labels, valid, self.num_bins)}
    return jax.lax.psum(sums, parallel.AXIS)

  def _build_eval(self):
    fn = jax.shard_map(self._per_device_eval, mesh=self.mesh, in_specs=(P(), BATCH, BATCH, BATCH),
                       out_specs=P())
    return jax.jit(fn)


def eval_summary(totals: dict) -> dict[str, float]:
  """Accuracy (%), mean NLL and ECE (%) from the summed eval-step outputs."""
  n = max(float(totals["count"]), 1.0)
  return {"top1": 100.0 * float(totals["top1"]) / n, "top5": 100.0 * float(totals["top5"]) / n,
          "nll": float(totals["nll"]) / n,
          "ece": metrics.expected_calibration_error(totals["bins"]),
          "count": int(totals["count"])}
