"""Projector (with `fix_channels`), predictor and the BYOL-style loss of BossNAS
(docs/method.md#siamese)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from bossnas_jax import search_space as ss
from bossnas_jax.models.layers import Dtype, batch_norm, conv1x1, patchify

# Necks: mmcv's kaiming_init(mode='fan_in', nonlinearity='relu') draws a normal, std sqrt(2/fan_in).
_neck_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# Predictor: normal(0, 0.01).
_pred_init = nn.initializers.normal(0.01)


def _mlp(x, hidden: int, out: int, init, train: bool, dtype: Dtype):
  """fc0 (bias) -> BN1d -> ReLU -> fc1 (bias); no BN after fc1 (`with_last_bn=False`)."""
  x = nn.Dense(hidden, dtype=dtype, kernel_init=init, name="fc0")(x)
  x = nn.relu(batch_norm(train, "bn0", dtype=dtype)(x))
  return nn.Dense(out, dtype=dtype, kernel_init=init, name="fc1")(x)


def fix_channels_name(d: int) -> str:
  return f"fix{ss.SCALE_NAMES[d]}"


class Projector(nn.Module):
  """`NonLinearNeckSimCLRProject`: block output at any scale -> 256-d projection.

  A block output at scale d > 0 first goes through `fix_channels`: depthwise conv k = s = 2^d,
  1x1 conv to the scale-0 width (2048), BN2d; every neck holds one adapter per scale 1..3 (the
  official layout), of which a path uses one. Then global average pool and the MLP.
  """

  dims: ss.Dims
  hidden: int = 4096
  out: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    d = self._scale_of(x.shape[-1])
    if d > 0:
      name = fix_channels_name(d)
      x = patchify(x.shape[-1], 2**d, name + "_dw", self.dtype)(x)
      x = conv1x1(self.dims.neck_in_channels, name + "_proj", self.dtype)(x)
      x = batch_norm(train, name + "_bn", dtype=self.dtype)(x)
    x = jnp.mean(x, axis=(1, 2))
    return _mlp(x, self.hidden, self.out, _neck_init, train, self.dtype)

  def _scale_of(self, channels: int) -> int:
    for d in range(ss.NUM_SCALES):
      if self.dims.channels(d) == channels:
        return d
    raise ValueError(f"Projector: no scale has {channels} channels "
                     f"({[self.dims.channels(d) for d in range(ss.NUM_SCALES)]}).")

  def init_inputs(self):
    """One dummy block output per scale: initialising with all of them builds every adapter."""
    return [jnp.zeros((1, self.dims.fmap(d), self.dims.fmap(d), self.dims.channels(d)))
            for d in range(ss.NUM_SCALES)]

  def call_all(self, xs, train: bool):
    return [self(x, train) for x in xs]


class Predictor(nn.Module):
  """`NonLinearNeckSimCLR` inside `LatentPredictHead`: 256 -> 4096 -> BN -> ReLU -> 256."""

  hidden: int = 4096
  out: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    return _mlp(x, self.hidden, self.out, _pred_init, train, self.dtype)


def normalize(x, eps: float = 1e-12):
  """F.normalize(dim=-1): x / max(||x||, eps), in float32."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def regression_loss(prediction, target):
  """L(p, t) = -(2/N) sum_n <p̂_n, t̂_n> over the batch: in [-2, 2], -2 when aligned.

  This is the official head's loss (BYOL's 2 - 2cos shifted by the constant 2). `target` carries
  no gradient by construction (callers pass target-network outputs).
  """
  target = jax.lax.stop_gradient(target)
  return -2.0 * jnp.mean(jnp.sum(normalize(prediction) * normalize(target), axis=-1))
