"""The retraining optimizer (docs/method.md#retraining-recipe): AdamW with warm-up + cosine, no
decay on 1-D parameters.

The official recipe is DeiT's (timm 0.3.2): AdamW(eps 1e-8, weight decay 0.05, betas 0.9/0.999),
lr = 5e-4 * global_batch / 512, 5 warm-up epochs from 1e-6, cosine to 1e-5. timm's
`add_weight_decay` exempts every parameter that is 1-D or named `*.bias`: biases and the BN scale
and shift. Here the same rule is read off the Flax tree: a leaf is decayed iff it has two or more
dimensions and is not called `bias` (kernels of convs and Dense layers); every BN `scale`/`bias`,
every conv/Dense `bias` (PEG, SE, classifier) is not.

One deliberate difference: timm sets the learning rate once per epoch (and DeiT's loop runs epoch 1
at the warm-up start value again, an off-by-one); here it changes every step, along the same curve:
linear from `warmup_lr` to the peak over the warm-up steps, then a half cosine from the peak down to
`min_lr`, reached at the last step. With few epochs (the demo) a per-epoch staircase would waste
whole epochs at 1e-6.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

BASE_BATCH = 512  # lr = base_lr * global_batch / BASE_BATCH (DeiT's linear scaling rule).


def peak_learning_rate(base_lr: float, global_batch: int) -> float:
  return base_lr * global_batch / BASE_BATCH


def learning_rate(step, *, peak: float, total_steps: int, warmup_steps: int,
                  warmup_lr: float = 1e-6, min_lr: float = 1e-5):
  """The learning rate used by optimizer step `step` (0-based; works on ints and traced arrays).

  step < warmup_steps: warmup_lr + (peak - warmup_lr) * step / warmup_steps;
  then min_lr + (peak - min_lr) * (1 + cos(pi * t)) / 2 with t = (step - warmup_steps) /
  (total_steps - 1 - warmup_steps), so the last step runs at exactly min_lr.
  """
  use_jnp = isinstance(step, jax.Array)
  cos = jnp.cos if use_jnp else math.cos
  decay_steps = max(total_steps - 1 - warmup_steps, 1)
  if use_jnp:
    step = step.astype(jnp.float32)
    t = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
    warm = warmup_lr + (peak - warmup_lr) * step / max(warmup_steps, 1)
    cosine = min_lr + (peak - min_lr) * (1 + cos(math.pi * t)) / 2
    return jnp.where(step < warmup_steps, warm, cosine)
  if step < warmup_steps:
    return warmup_lr + (peak - warmup_lr) * step / warmup_steps
  t = min(max((step - warmup_steps) / decay_steps, 0.0), 1.0)
  return min_lr + (peak - min_lr) * (1 + cos(math.pi * t)) / 2


def decay_mask(params):
  """True where AdamW decays the weight: kernels (ndim >= 2, not named 'bias'); False for biases,
  BN scales/shifts and any other 1-D parameter (timm's `add_weight_decay`)."""

  def decayed(path, leaf) -> bool:
    name = path[-1].key if isinstance(path[-1], jax.tree_util.DictKey) else str(path[-1])
    return leaf.ndim >= 2 and name != "bias"

  return jax.tree_util.tree_map_with_path(decayed, params)


def adamw(schedule, *, weight_decay: float = 0.05, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, clip_grad: float | None = None) -> optax.GradientTransformation:
  """AdamW as torch.optim.AdamW computes it: p -= lr * (adam_update + weight_decay * p), the decay
  masked by `decay_mask`. `clip_grad` (global norm; DeiT's default is none) is optional."""
  tx = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
  if clip_grad:
    tx = optax.chain(optax.clip_by_global_norm(clip_grad), tx)
  return tx


def from_config(train, *, steps_per_epoch: int) -> tuple[optax.GradientTransformation, callable]:
  """(optimizer, schedule) of config.train for a run of `train.epochs` epochs."""
  total = int(train.epochs) * steps_per_epoch
  peak = peak_learning_rate(float(train.base_lr), int(train.batch_size))

  def schedule(step):
    return learning_rate(step, peak=peak, total_steps=total,
                         warmup_steps=int(round(float(train.warmup_epochs) * steps_per_epoch)),
                         warmup_lr=float(train.warmup_lr), min_lr=float(train.min_lr))

  clip = train.get("clip_grad", None)
  tx = adamw(schedule, weight_decay=float(train.weight_decay), b1=float(train.b1),
             b2=float(train.b2), eps=float(train.eps), clip_grad=float(clip) if clip else None)
  return tx, schedule
