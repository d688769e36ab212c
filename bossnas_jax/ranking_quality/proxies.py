"""Training-free proxies: scores of an untrained network, baselines for the ranking benchmark.

NASWOT (Mellor, Turner, Storkey & Crowley, "Neural Architecture Search without Training", ICML
2021): at initialisation, each image of a mini-batch gets a binary code, one bit per activation
unit (unit active or not); networks whose codes tell images apart (a kernel of Hamming
similarities with a large log-determinant) tend to train to higher accuracy.

  K[i, j] = number of units on which images i and j agree,    score = log |det K|

BossNet uses SiLU, not ReLU; a SiLU's output is positive exactly where its input is, so "active"
here is "pre-activation > 0". The pre-activations are read from the BatchNorms that feed an
activation (every activation of a BossNet follows a BatchNorm, except the one after a residual
sum; the shortcut's BatchNorm feeds none) and from the output of every residual block (the
activation after the sum). Units that are exactly 0 for every image carry no code and are left
out: the BatchNorms with zero-initialised scale (the last one of each residual branch) output
exactly 0 at initialisation. K is summed tap by tap (never all units at once) and its
log-determinant is taken in float64, as the original.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bossnas_jax.data import normalize
from bossnas_jax.models import bossnet

# Residual blocks whose output is an activation of the sum; an EmptyStage's output is act(bn(x)),
# whose bits its BatchNorm already gives.
_BLOCKS = (bossnet.ResConvBlock, bossnet.ResAttBlock)
_NOT_PRE_ACTIVATIONS = ("shortcut_bn",)


def _agreement(model: bossnet.BossNet, variables, images):
  """(K, units, taps): K[i, j] = units on which images i and j agree, over every tapped unit
  that is not identically zero over the batch; `units` counts those units, `taps` the tapped
  module outputs."""
  taps = []

  def tap(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    m = context.module
    if context.method_name == "__call__" and (
        isinstance(m, _BLOCKS) or (isinstance(m, nn.BatchNorm)
                                   and m.name not in _NOT_PRE_ACTIVATIONS)):
      taps.append(out.reshape(out.shape[0], -1).astype(jnp.float32))
    return out

  with nn.intercept_methods(tap):
    model.apply(variables, normalize.normalize_images(images), train=True,
                mutable=["batch_stats"])  # Batch statistics, as the untrained network trains.
  k = jnp.zeros((images.shape[0], images.shape[0]), jnp.float32)
  units = jnp.zeros((), jnp.int32)
  for x in taps:
    c = (x > 0).astype(jnp.float32)
    live = jnp.any(x != 0, axis=0).astype(jnp.float32)
    # Counts below 2**24 are exact in float32 (checked against `units` by the caller).
    k = k + (c * live) @ c.T + ((1 - c) * live) @ (1 - c).T
    units = units + jnp.sum(live).astype(jnp.int32)
  return k, units, jnp.asarray(len(taps), jnp.int32)


_agreement_jit = jax.jit(_agreement, static_argnums=(0,))


def naswot(model: bossnet.BossNet, variables, images: np.ndarray) -> float:
  """NASWOT score of `model` with `variables` (at initialisation) on uint8 NHWC `images`; higher
  is predicted better. A singular kernel (two images with equal codes) scores -inf."""
  k, units, _ = _agreement_jit(model, variables, jnp.asarray(images))
  if int(units) >= 2**24:
    raise ValueError(f"NASWOT: {int(units):,} units overflow float32's exact integers; use "
                     "fewer or smaller images.")
  sign, logdet = np.linalg.slogdet(np.asarray(k, np.float64))
  return float(logdet) if sign > 0 else float("-inf")


def naswot_score(config: bossnet.BossNetConfig, images: np.ndarray, seed: int = 0) -> float:
  """NASWOT of a freshly initialised BossNet `config` (float32) at the images' resolution, with
  drop-path off (the codes are of the network itself, not of a random thinning of it)."""
  model = bossnet.BossNet(dataclasses.replace(config, drop_path_rate=0.0), jnp.float32)
  variables = bossnet.init_variables(model, jax.random.key(seed), int(images.shape[1]))
  return naswot(model, variables, images)
