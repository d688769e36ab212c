"""Device part of the BossNAS augmentation (docs/method.md#augmentations) as pure, jittable JAX
functions of a PRNG key.

After the host's crop and flip, each view gets, in this order: colour jitter (torchvision's
ColorJitter(0.4, 0.4, 0.2, 0.1): the four adjustments in a random order, applied with p = 0.8),
grayscale (p = 0.2, ITU-R 601-2 luma), Gaussian blur (sigma ~ U(0.1, 2) pixels, PIL's
GaussianBlur(radius=sigma), with the pipeline's probability), solarize (threshold 128 of 255, with
the pipeline's probability), then ImageNet normalisation. Views of pipeline 1 come first, then those
of pipeline 2. Images are floats in [0, 1] between the steps and clipped after each adjustment, as
torchvision's tensor functions do (PIL also rounds to 8 bits after each step; we do not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from bossnas_jax.data import normalize

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, what PIL's convert('L') and torchvision use.

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.4, 0.4, 0.2, 0.1
JITTER_PROB, GRAYSCALE_PROB = 0.8, 0.2
SIGMA_RANGE = (0.1, 2.0)


def grayscale(image: jax.Array) -> jax.Array:
  """(H, W) luma of an RGB image in [0, 1] (a weighted sum: no matmul, whose float32 precision
  may be reduced on GPUs)."""
  return LUMA[0] * image[..., 0] + LUMA[1] * image[..., 1] + LUMA[2] * image[..., 2]


def _blend(image: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
  return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  return _blend(image, jnp.zeros_like(image), factor)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Blend with the image's mean grey level (torchvision/PIL ImageEnhance.Contrast)."""
  return _blend(image, jnp.mean(grayscale(image)), factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Blend with the image's grey version (PIL ImageEnhance.Color)."""
  return _blend(image, grayscale(image)[..., None], factor)


def adjust_hue(image: jax.Array, shift: jax.Array) -> jax.Array:
  """Rotates the hue by `shift` turns, keeping saturation and value (torchvision's HSV round trip).

  With hue h in sixths of a turn, value v = max and span = max - min, channel n in (5, 3, 1) for
  (r, g, b) is v - span * clip(min(k, 4 - k), 0, 1) with k = (n + h) mod 6.
  """
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  high = jnp.maximum(jnp.maximum(r, g), b)
  span = high - jnp.minimum(jnp.minimum(r, g), b)
  safe = jnp.where(span > 0, span, 1.0)
  sixths = jnp.where(high == r, (g - b) / safe,
                     jnp.where(high == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  k = jnp.mod(jnp.asarray([5.0, 3.0, 1.0], image.dtype) + (sixths + 6.0 * shift)[..., None], 6.0)
  return high[..., None] - span[..., None] * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def _jitter_from_uniforms(u: jax.Array, brightness: float, contrast: float, saturation: float,
                          hue: float):
  """(order, factors, shift) from 8 uniforms in [0, 1): 4 sort keys, 3 factors, 1 hue shift."""
  # Sorting 4 i.i.d. uniforms gives a uniform random permutation; ranks by comparison (ties by
  # index) compile much faster than a sort.
  keys = u[:4]
  index = jnp.arange(4)
  ranks = jnp.sum((keys[None, :] < keys[:, None])
                  | ((keys[None, :] == keys[:, None]) & (index[None, :] < index[:, None])), axis=1)
  order = jnp.argmax(ranks[None, :] == index[:, None], axis=1)  # order[position] = operation.
  spread = jnp.asarray([brightness, contrast, saturation], jnp.float32)
  factors = 1.0 + (2.0 * u[4:7] - 1.0) * spread
  shift = (2.0 * u[7] - 1.0) * hue
  return order, factors, shift


def jitter_params(key: jax.Array, brightness: float = BRIGHTNESS, contrast: float = CONTRAST,
                  saturation: float = SATURATION, hue: float = HUE):
  """(order, factors, shift) of one ColorJitter draw.

  order: a permutation of 0..3 (0 brightness, 1 contrast, 2 saturation, 3 hue); factors: the
  brightness/contrast/saturation factors, uniform in [1 - x, 1 + x]; shift: hue in [-hue, hue].
  """
  u = jax.random.uniform(key, (8,), jnp.float32)
  return _jitter_from_uniforms(u, brightness, contrast, saturation, hue)


def jitter_with(image: jax.Array, order: jax.Array, factors: jax.Array,
                shift: jax.Array) -> jax.Array:
  """ColorJitter on one (H, W, 3) image with given parameters (see `jitter_params`).

  Brightness, contrast and saturation are all blends `clip(f x + (1 - f) other)` (other = black,
  the mean grey level, the grey image), so each position of the order is one blend with the factor
  and target of its operation; the hue rotation, the costly one, is computed once, between the
  positions before it and those after it (under vmap a switch would compute every branch).
  """
  hue_position = jnp.argmax(order == 3)

  def blend_at(position, x, active):
    op = order[position]
    grey = grayscale(x)
    other = jnp.where(op == 1, jnp.mean(grey), jnp.where(op == 2, grey, 0.0))[..., None]
    factor = jnp.where(active & (op != 3), factors[jnp.minimum(op, 2)], 1.0).astype(x.dtype)
    return jnp.clip(factor * x + (1.0 - factor) * other, 0.0, 1.0)

  image = jax.lax.fori_loop(0, 4, lambda p, x: blend_at(p, x, p < hue_position), image)
  image = adjust_hue(image, shift.astype(image.dtype))
  return jax.lax.fori_loop(0, 4, lambda p, x: blend_at(p, x, p > hue_position), image)


def color_jitter(key: jax.Array, image: jax.Array, brightness: float = BRIGHTNESS,
                 contrast: float = CONTRAST, saturation: float = SATURATION,
                 hue: float = HUE) -> jax.Array:
  """torchvision ColorJitter on one (H, W, 3) image: the four adjustments in a random order."""
  return jitter_with(image, *jitter_params(key, brightness, contrast, saturation, hue))


def gaussian_kernel(sigma: jax.Array, radius: int) -> jax.Array:
  """Normalised 1-D Gaussian of `sigma` pixels on taps -radius..radius."""
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * jnp.square(taps / sigma))
  return weights / jnp.sum(weights)


def blur_radius(resolution: int, sigma_max: float = SIGMA_RANGE[1]) -> int:
  """Kernel half-width: 3 sigma_max (6 taps each side for sigma <= 2), at most resolution - 1."""
  return max(1, min(int(math.ceil(3 * sigma_max)), resolution - 1))


def gaussian_blur(image: jax.Array, sigma: jax.Array, radius: int | None = None) -> jax.Array:
  """Separable Gaussian blur of an (H, W, C) image, edges extended (as PIL's GaussianBlur)."""
  height, width = image.shape[0], image.shape[1]
  radius = blur_radius(min(height, width)) if radius is None else radius
  kernel = gaussian_kernel(sigma, radius).astype(image.dtype)
  padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="edge")
  image = sum(kernel[i] * padded[i:i + height] for i in range(2 * radius + 1))
  padded = jnp.pad(image, ((0, 0), (radius, radius), (0, 0)), mode="edge")
  return sum(kernel[i] * padded[:, i:i + width] for i in range(2 * radius + 1))


def solarize(image: jax.Array) -> jax.Array:
  """PIL's solarize(threshold=128) on [0, 1]: levels >= 128 of 255 become 255 - level.

  The threshold 0.5 lies between 127/255 and 128/255, so 8-bit images are split exactly, and a
  value between levels is solarised exactly when rounding it to the nearest level (what PIL's
  8-bit steps before solarize do) gives 128 or more.
  """
  return jnp.where(image >= 0.5, 1.0 - image, image)


NUM_UNIFORMS = 13  # Random numbers per view: 5 decisions/sigma, then 8 for the colour jitter.


def params_from_uniforms(u: jax.Array, blur_prob: jax.Array,
                         solarize_prob: jax.Array) -> dict[str, jax.Array]:
  """The decisions of one view (which steps apply, their parameters) from 13 uniforms in [0, 1)."""
  order, factors, shift = _jitter_from_uniforms(u[5:], BRIGHTNESS, CONTRAST, SATURATION, HUE)
  return {
      "jitter": u[0] < JITTER_PROB,
      "grayscale": u[1] < GRAYSCALE_PROB,
      "blur": u[2] < blur_prob,
      "sigma": SIGMA_RANGE[0] + (SIGMA_RANGE[1] - SIGMA_RANGE[0]) * u[3],
      "solarize": u[4] < solarize_prob,
      "order": order,
      "factors": factors,
      "shift": shift,
  }


def apply_augmentation(image: jax.Array, params: dict[str, jax.Array]) -> jax.Array:
  """The device steps on one (H, W, 3) float image in [0, 1], as `params` decided."""
  jittered = jitter_with(image, params["order"], params["factors"], params["shift"])
  image = jnp.where(params["jitter"], jittered, image)
  grey = jnp.broadcast_to(grayscale(image)[..., None], image.shape)
  image = jnp.where(params["grayscale"], grey, image)
  image = jnp.where(params["blur"], gaussian_blur(image, params["sigma"]), image)
  return jnp.where(params["solarize"], solarize(image), image)


def pipeline_probs(num_views: int, probs: Sequence[float]) -> jax.Array:
  """Per-view probability: the first half of the views use probs[0], the second half probs[1]."""
  if num_views % 2:
    raise ValueError(f"Views come in pipeline-1 / pipeline-2 halves; got {num_views} views.")
  half = num_views // 2
  return jnp.asarray([probs[0]] * half + [probs[1]] * half, jnp.float32)


def augmentation_params(key: jax.Array, batch: int, num_views: int, *,
                        blur_prob: Sequence[float] = (0.1, 1.0),
                        solarize_prob: Sequence[float] = (0.0, 0.2)) -> dict[str, jax.Array]:
  """The decisions `device_augment(key, ...)` takes for a (batch, num_views) set of views."""
  blur = pipeline_probs(num_views, blur_prob)
  solar = pipeline_probs(num_views, solarize_prob)
  # One draw for the whole batch: much cheaper to compile than a key per view.
  u = jax.random.uniform(key, (batch, num_views, NUM_UNIFORMS), jnp.float32)
  return jax.vmap(jax.vmap(params_from_uniforms), in_axes=(0, None, None))(u, blur, solar)


def device_augment(key: jax.Array, views: jax.Array, *,
                   blur_prob: Sequence[float] = (0.1, 1.0),
                   solarize_prob: Sequence[float] = (0.0, 0.2),
                   dtype=jnp.float32) -> jax.Array:
  """Augments uint8 views (B, V, H, W, 3) and returns normalised (B, V, H, W, 3) in `dtype`.

  Views 0..V/2-1 follow pipeline 1, views V/2..V-1 pipeline 2 (`blur_prob`/`solarize_prob` give the
  two pipelines' probabilities). Every view draws its own parameters from `key`; inside a
  shard_map, fold the device index into `key` first
  (`jax.random.fold_in(key, jax.lax.axis_index('data'))`) so that devices draw differently.
  """
  batch, num_views = views.shape[:2]
  params = augmentation_params(key, batch, num_views, blur_prob=blur_prob,
                               solarize_prob=solarize_prob)
  images = views.astype(jnp.float32) / 255.0
  images = jax.vmap(jax.vmap(apply_augmentation))(images, params)
  return normalize.normalize(images, dtype)
