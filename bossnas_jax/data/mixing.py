"""Device part of the retraining augmentation (docs/method.md#retraining-recipe): pure, jittable
functions of a PRNG key.

On one device's NHWC batch (usable inside shard_map on the local batch), in timm's order:
normalise (ImageNet mean/std) -> random erasing (part of timm's per-image transform, so per example)
-> mixup / cutmix on the batch with smoothed one-hot targets. `train_inputs` chains them from the
config section config.augment.

Semantics follow timm (RandomErasing, Mixup in 'batch' mode, mixup_target):
- random erasing: with probability `prob` per image, 1..count boxes (count uniform, timm's min_count
  1 / max_count count); box area a uniform in [min_area, max_area] of the image divided by the
  number of boxes, aspect r log-uniform in [min_aspect, max_aspect] (default 1 / min_aspect), h =
  round(sqrt(a r)), w = round(sqrt(a / r)), accepted when h < H and w < W, up to 10 tries per box
  (no box if all fail); top-left uniform over the positions that fit. Filled with per-pixel N(0, 1)
  noise ('pixel'), one N(0, 1) colour per box and channel ('rand') or zeros ('const').
  Jittable rejection sampling: the 10 tries of every box are drawn at once and the first accepted
  one is picked with an argmax over the acceptance mask; this has exactly the distribution of the
  sequential loop (the first success of i.i.d. tries). The box becomes a (H, W) mask; nothing has a
  dynamic shape.
- mixup/cutmix: one decision per batch: with probability `prob` the batch is mixed, by cutmix with
  probability `switch_prob` (when both alphas are > 0) else mixup, with lambda ~ Beta(alpha, alpha).
  The partner of example i is example B-1-i (the flipped batch). Mixup: x = lam x + (1 - lam)
  x_flip. Cutmix: a box of cut = int(side * sqrt(1 - lam)) centred uniformly in the image, half-
  sizes cut // 2, clipped to the image, takes the flipped batch's pixels; with correct_lam, lam
  becomes 1 - box area / image area. Targets: lam y + (1 - lam) y_flip with smoothed one-hots.
- label smoothing: off = smoothing / num_classes, on = 1 - smoothing + off.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from bossnas_jax.data import normalize

ERASE_MODES = ("pixel", "rand", "const")
ERASE_TRIES = 10


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
  """int labels (B,) -> float32 (B, num_classes): `on` at the label, `off` elsewhere (timm)."""
  if not 0.0 <= smoothing < 1.0:
    raise ValueError(f"Label smoothing must be in [0, 1), got {smoothing}.")
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return one_hot * (on - off) + off


def _uniform_index(u: jax.Array, n: jax.Array) -> jax.Array:
  """An integer uniform in [0, n) from u ~ U[0, 1) (clipped: float32 u n can round up to n)."""
  return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def erase_boxes(key: jax.Array, shape, *, prob: float = 0.25, min_area: float = 0.02,
                max_area: float = 1 / 3, min_aspect: float = 0.3, max_aspect: float | None = None,
                count: int = 1):
  """The boxes `random_erasing` draws for a batch of `shape` (B, H, W, C) from `key`:
  (active (B, count) bool, top, left, h, w (B, count) int32). Inactive boxes erase nothing.

  All random numbers come from one uniform array (B, 2 + count (2 tries + 2)): the erase decision,
  the number of boxes, and per box the tries' areas and aspect ratios and the box position. One
  draw compiles several times faster than separate randint/uniform calls per example.
  """
  _check_erasing(prob, "pixel", min_area, max_area, min_aspect, max_aspect, count)
  count = int(count)
  batch, height, width = int(shape[0]), int(shape[1]), int(shape[2])
  max_aspect = max_aspect if max_aspect is not None else 1.0 / min_aspect
  log_lo, log_hi = math.log(min_aspect), math.log(max_aspect)
  tries = ERASE_TRIES
  u = jax.random.uniform(key, (batch, 2 + count * (2 * tries + 2)))
  apply = u[:, 0] < prob
  number = 1 + _uniform_index(u[:, 1], count)  # Boxes per image, uniform in 1..count.
  u = u[:, 2:].reshape(batch, count, 2 * tries + 2)
  area = (min_area + (max_area - min_area) * u[..., :tries]) * (height * width)
  area = area / number[:, None, None]
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[..., tries:2 * tries])
  # jnp.round rounds half to even, like Python's round().
  h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  accepted = (h < height) & (w < width)
  first = jnp.argmax(accepted, axis=-1)[..., None]  # The first accepted try (0 when none is).
  h = jnp.take_along_axis(h, first, axis=-1)[..., 0]
  w = jnp.take_along_axis(w, first, axis=-1)[..., 0]
  found = jnp.any(accepted, axis=-1)
  h, w = jnp.where(found, h, 0), jnp.where(found, w, 0)
  top = _uniform_index(u[..., 2 * tries], height - h + 1)
  left = _uniform_index(u[..., 2 * tries + 1], width - w + 1)
  active = apply[:, None] & found & (jnp.arange(count)[None, :] < number[:, None])
  return active, top, left, h, w


def _check_erasing(prob, mode, min_area, max_area, min_aspect, max_aspect, count):
  if not 0.0 <= prob <= 1.0:
    raise ValueError(f"Random-erasing probability must be in [0, 1], got {prob}.")
  if mode not in ERASE_MODES:
    raise ValueError(f"Random-erasing mode must be one of {ERASE_MODES}, got {mode!r}.")
  if not 0.0 < min_area <= max_area <= 1.0:
    raise ValueError(f"Random-erasing areas must satisfy 0 < min_area <= max_area <= 1, got "
                     f"({min_area}, {max_area}).")
  upper = max_aspect if max_aspect is not None else (1.0 / min_aspect if min_aspect > 0 else 0)
  if not 0.0 < min_aspect <= upper:
    raise ValueError(f"Random-erasing aspect ratios must satisfy 0 < min_aspect <= max_aspect, "
                     f"got ({min_aspect}, {max_aspect}).")
  if isinstance(count, bool) or int(count) != count or count < 1:
    raise ValueError(f"Random-erasing count must be an integer >= 1, got {count!r}.")


def random_erasing(key: jax.Array, images: jax.Array, *, prob: float = 0.25, mode: str = "pixel",
                   min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3,
                   max_aspect: float | None = None, count: int = 1) -> jax.Array:
  """timm's RandomErasing on normalised NHWC float images, one decision per example (module doc)."""
  _check_erasing(prob, mode, min_area, max_area, min_aspect, max_aspect, count)
  count = int(count)
  if prob == 0.0:
    return images
  batch, height, width, channels = images.shape
  k_boxes, k_fill = jax.random.split(key)
  active, top, left, h, w = erase_boxes(k_boxes, images.shape, prob=prob, min_area=min_area,
                                        max_area=max_area, min_aspect=min_aspect,
                                        max_aspect=max_aspect, count=count)
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  if mode == "pixel":
    # Overlapping boxes would each draw fresh noise; one field gives the same distribution.
    noise = jax.random.normal(k_fill, images.shape, images.dtype)
  elif mode == "rand":
    colours = jax.random.normal(k_fill, (batch, count, channels), images.dtype)
  out = images
  for k in range(count):  # Later boxes overwrite earlier ones, as timm's loop does.
    inside = (active[:, k, None, None]
              & (rows >= top[:, k, None, None]) & (rows < (top + h)[:, k, None, None])
              & (cols >= left[:, k, None, None]) & (cols < (left + w)[:, k, None, None]))
    if mode == "pixel":
      fill = noise
    elif mode == "rand":
      fill = jnp.broadcast_to(colours[:, k, None, None, :], images.shape)
    else:
      fill = jnp.zeros_like(images)
    out = jnp.where(inside[..., None], fill, out)
  return out


def _check_mixing(num_classes, mixup_alpha, cutmix_alpha, switch_prob, prob, label_smoothing):
  if int(num_classes) < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  if mixup_alpha < 0 or cutmix_alpha < 0:
    raise ValueError(f"mixup and cutmix alphas must be >= 0 (0 = off), got {mixup_alpha} and "
                     f"{cutmix_alpha}.")
  for name, value in (("switch_prob", switch_prob), ("mix_prob", prob)):
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"{name} must be in [0, 1], got {value}.")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"Label smoothing must be in [0, 1), got {label_smoothing}.")


class MixParams(NamedTuple):
  """One batch's mixing draw (scalars): `lam` weighs the original images and targets (1 when the
  batch is not mixed; for cutmix with correct_lam, 1 - box area / image area); `drawn` is the
  Beta draw before that correction (1 when not mixed); the cutmix box rows [yl, yh) and columns
  [xl, xh) are empty unless use_cutmix."""

  lam: jax.Array
  use_cutmix: jax.Array
  box: tuple[jax.Array, jax.Array, jax.Array, jax.Array]
  drawn: jax.Array


def mix_params(key: jax.Array, shape, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
               switch_prob: float = 0.5, prob: float = 1.0, correct_lam: bool = True) -> MixParams:
  """The draw `mixup_cutmix` makes from `key` for a batch of `shape` (B, H, W, C)."""
  height, width = int(shape[1]), int(shape[2])
  k_apply, k_switch, k_mixup, k_cutmix, k_y, k_x = jax.random.split(key, 6)
  apply = jax.random.uniform(k_apply) < prob
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  one = jnp.float32(1.0)
  lam_mixup = jax.random.beta(k_mixup, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else one
  lam_cutmix = jax.random.beta(k_cutmix, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else one
  lam = jnp.where(apply, jnp.where(use_cutmix, lam_cutmix, lam_mixup), one).astype(jnp.float32)
  drawn = lam
  use_cutmix = apply & use_cutmix
  ratio = jnp.sqrt(jnp.maximum(1.0 - lam, 0.0))
  cut_h = jnp.where(use_cutmix, jnp.floor(height * ratio), 0).astype(jnp.int32)
  cut_w = jnp.where(use_cutmix, jnp.floor(width * ratio), 0).astype(jnp.int32)
  cy = jax.random.randint(k_y, (), 0, height)
  cx = jax.random.randint(k_x, (), 0, width)
  yl, yh = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  xl, xh = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  if correct_lam:
    box_lam = 1.0 - ((yh - yl) * (xh - xl)).astype(jnp.float32) / float(height * width)
    lam = jnp.where(use_cutmix, box_lam, lam)
  return MixParams(lam, use_cutmix, (yl, yh, xl, xh), drawn)


def mixup_cutmix(key: jax.Array, images: jax.Array, labels: jax.Array, *, num_classes: int,
                 mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, switch_prob: float = 0.5,
                 prob: float = 1.0, label_smoothing: float = 0.1,
                 correct_lam: bool = True) -> tuple[jax.Array, jax.Array]:
  """timm's Mixup ('batch' mode) on NHWC images: (mixed images, soft targets (B, num_classes))."""
  _check_mixing(num_classes, mixup_alpha, cutmix_alpha, switch_prob, prob, label_smoothing)
  targets = smooth_labels(labels, num_classes, label_smoothing)
  if mixup_alpha == 0 and cutmix_alpha == 0:
    return images, targets
  lam, use_cutmix, (yl, yh, xl, xh), _ = mix_params(
      key, images.shape, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
      switch_prob=switch_prob, prob=prob, correct_lam=correct_lam)
  flipped = images[::-1]
  rows = jnp.arange(images.shape[1])[:, None]
  cols = jnp.arange(images.shape[2])[None, :]
  box = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)
  cut = jnp.where(box[None, :, :, None], flipped, images)
  lam_images = lam.astype(images.dtype)
  mixed = lam_images * images + (1 - lam_images) * flipped
  images = jnp.where(use_cutmix, cut, mixed)
  targets = lam * targets + (1.0 - lam) * targets[::-1]
  return images, targets


AUGMENT_KEYS = ("erase_prob", "erase_mode", "erase_count", "mixup", "cutmix", "switch_prob",
                "mix_prob", "label_smoothing")


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Clear errors for missing or bad values of config.augment (call it before training starts)."""
  missing = [k for k in AUGMENT_KEYS if k not in cfg]
  if missing:
    raise ValueError(f"config.augment lacks {missing}; it needs {list(AUGMENT_KEYS)}.")
  _check_erasing(float(cfg.erase_prob), cfg.erase_mode, 0.02, 1 / 3, 0.3, None, cfg.erase_count)
  _check_mixing(1, float(cfg.mixup), float(cfg.cutmix), float(cfg.switch_prob),
                float(cfg.mix_prob), float(cfg.label_smoothing))


def train_inputs(key: jax.Array, images_uint8: jax.Array, labels: jax.Array,
                 cfg: ml_collections.ConfigDict, num_classes: int) -> tuple[jax.Array, jax.Array]:
  """uint8 NHWC images and int labels -> (normalised, erased, mixed float32 images, float32 soft
  targets (B, num_classes)), from the keys of config.augment (AUGMENT_KEYS)."""
  check_config(cfg)
  images = normalize.normalize_images(images_uint8)
  k_erase, k_mix = jax.random.split(key)
  if float(cfg.erase_prob) > 0:
    images = random_erasing(k_erase, images, prob=float(cfg.erase_prob), mode=cfg.erase_mode,
                            count=int(cfg.erase_count))
  return mixup_cutmix(k_mix, images, labels, num_classes=num_classes, mixup_alpha=float(cfg.mixup),
                      cutmix_alpha=float(cfg.cutmix), switch_prob=float(cfg.switch_prob),
                      prob=float(cfg.mix_prob), label_smoothing=float(cfg.label_smoothing))
