"""The network's input: ImageNet mean/std normalisation (timm's defaults, as the official training
and evaluation use), for every pipeline: block training, retraining and evaluation."""

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image: jax.Array, dtype=jnp.float32) -> jax.Array:
  """ImageNet mean/std normalisation of [0, 1] images, cast to `dtype`."""
  mean = jnp.asarray(IMAGENET_MEAN, image.dtype)
  std = jnp.asarray(IMAGENET_STD, image.dtype)
  return ((image - mean) / std).astype(dtype)


def normalize_images(images) -> jax.Array:
  """uint8 (or [0, 255] float) NHWC images -> the network's input (float32)."""
  return normalize(jnp.asarray(images, jnp.float32) / 255.0)
