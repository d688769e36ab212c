"""Training-free proxies: scores of an untrained network, baselines for the ranking benchmark.

NASWOT (Mellor, Turner, Storkey & Crowley, "Neural Architecture Search without Training", ICML
2021): at initialisation, each image of a mini-batch gets a binary code, one bit per activation
unit (unit active or not); networks whose codes tell images apart (a kernel of Hamming
similarities with a large log-determinant) tend to train to higher accuracy.

  K[i, j] = number of units on which images i and j agree,    score = log |det K|

BossNet uses SiLU, not ReLU; a SiLU's output is positive exactly where its input is, so "active"
here is "pre-activation > 0". The pre-activations are read from every BatchNorm output (each
activation of a BossNet follows a BatchNorm, except the one after a residual sum) and from every
block's output (the activation after the residual sum). Units that are exactly 0 for every image
carry no code and are left out: the BatchNorms with zero-initialised scale (the last one of each
residual branch) output exactly 0 at initialisation.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bossnas_jax.models import bossnet


def _codes(model: bossnet.BossNet, variables, images):
  """(batch, units) pre-activation signs and a (units,) mask of units not identically zero."""
  taps = []

  def tap(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    kinds = (nn.BatchNorm, bossnet.ResConvBlock, bossnet.ResAttBlock, bossnet.EmptyStage)
    if context.method_name == "__call__" and isinstance(context.module, kinds):
      taps.append(out.reshape(out.shape[0], -1))
    return out

  with nn.intercept_methods(tap):
    model.apply(variables, bossnet.normalize_images(images), train=True,
                mutable=["batch_stats"])  # Batch statistics, as the untrained network trains.
  x = jnp.concatenate(taps, axis=1).astype(jnp.float32)
  return (x > 0).astype(jnp.float32), jnp.any(x != 0, axis=0).astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0,))
def _naswot(model: bossnet.BossNet, variables, images):
  c, mask = _codes(model, variables, images)
  cm = c * mask
  agree = cm @ c.T + ((1 - c) * mask) @ (1 - c).T
  # Integer counts below 2**24 are exact in float32.
  return jnp.linalg.slogdet(agree)


def naswot(model: bossnet.BossNet, variables, images: np.ndarray) -> float:
  """NASWOT score of `model` with `variables` (at initialisation) on uint8 NHWC `images`; higher
  is predicted better. A singular kernel (two images with equal codes) scores -inf."""
  sign, logdet = _naswot(model, variables, jnp.asarray(images))
  return float(logdet) if float(sign) > 0 else float("-inf")


def naswot_score(config: bossnet.BossNetConfig, images: np.ndarray, seed: int = 0) -> float:
  """NASWOT of a freshly initialised BossNet `config` (float32) at the images' resolution, with
  drop-path off (the codes are of the network itself, not of a random thinning of it)."""
  model = bossnet.BossNet(dataclasses.replace(config, drop_path_rate=0.0), jnp.float32)
  variables = bossnet.init_variables(model, jax.random.key(seed), int(images.shape[1]))
  return naswot(model, variables, images)
