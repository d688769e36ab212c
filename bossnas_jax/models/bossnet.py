"""BossNet, the final network of a searched HyTra architecture (docs/method.md#bossnet), in Flax
Linen (NHWC).

Build it from a named model (`bossnet_t0`, `bossnet_t0_nose`, `bossnet_t1`), an architecture
string of the search space ('5433-3230-0010-0000') or a stage encoding:

    model = BossNet(named_config("bossnet_t0"))
    variables = init_variables(model, jax.random.key(0), resolution=224)
    logits = eval_logits(model, variables, images)          # images: (B, H, W, 3), normalised

The semantics are PyTorch's (the official retraining model), so converted official checkpoints give
the same logits: explicit symmetric conv padding, BN eps 1e-5, the avg-down shortcut pool with
ceil_mode=True and count_include_pad=False, SE width max(C/16, 8) with a ReLU inside, attention
scaled by dim_head^-0.5 (standard attention, softmax over keys). Variable names mirror the
official state_dict keys one to one (see `convert/keys.py`): `conv1`, `bn1`, `layer{s}_{i}/...`,
`fc`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.models.bossnet_spec import (  # noqa: F401  (re-exported)
    BlockSpec,
    BossNetConfig,
    BossNetSpecError,
    config_from_architecture,
    encoding_from_architecture,
    layout,
    named_config,
    resolve_config,
)
from bossnas_jax.models.layers import (
    MHSA,
    Dtype,
    batch_norm,
    cpu_conv,
    cpu_dense_dot,
    max_pool,
    torch_default_bias_init,
    torch_default_init,
)

# BossNet's init (docs/method.md#bossnet-definition): conv kaiming-normal(fan_out, relu); Linear
# keeps PyTorch's default.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

_ACTS = {"silu": nn.silu, "relu": nn.relu}


def _conv(features: int, kernel: int, stride: int, padding: int, name: str, dtype: Dtype,
          groups: int = 1, bias_fan_in: int = 0):
  """A PyTorch Conv2d: explicit symmetric padding; bias (with PyTorch's default init) iff
  bias_fan_in > 0. On the CPU backend the depthwise PEG and strided 3x3 convolutions run in the
  forms XLA:CPU differentiates fast (`layers.cpu_conv`; same maths, sums in another order)."""
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride),
      padding=((padding, padding), (padding, padding)), feature_group_count=groups,
      use_bias=bias_fan_in > 0, dtype=dtype, kernel_init=kaiming_fan_out,
      bias_init=torch_default_bias_init(bias_fan_in) if bias_fan_in else nn.initializers.zeros,
      conv_general_dilated=cpu_conv, name=name)


def _conv1x1(features: int, name: str, dtype: Dtype, bias_fan_in: int = 0):
  """A 1x1 Conv2d as a Dense on the channel axis (faster on XLA:CPU; same maths), with the
  kernel gradient written as one matmul on the CPU backend (`layers.cpu_dense_dot`)."""
  return nn.Dense(
      features, use_bias=bias_fan_in > 0, dtype=dtype, kernel_init=kaiming_fan_out,
      bias_init=torch_default_bias_init(bias_fan_in) if bias_fan_in else nn.initializers.zeros,
      dot_general=cpu_dense_dot, name=name)


def _peg(channels: int, stride: int, name: str, dtype: Dtype):
  """PEG: depthwise 3x3 with bias, pad 1; carries the block's stride."""
  return _conv(channels, 3, stride, 1, name, dtype, groups=channels, bias_fan_in=9)


def avg_pool_ceil(x, stride: int = 2, window: int = 2):
  """AvgPool2d(window, stride, ceil_mode=True, count_include_pad=False), padding 0, NHWC.

  For odd sides the last window hangs over the edge and averages only the pixels it covers
  (7 -> 4 at stride 2).
  """
  h, w = x.shape[1:3]
  oh, ow = bs.avg_pool_ceil_out(h, stride, window), bs.avg_pool_ceil_out(w, stride, window)
  ph = max((oh - 1) * stride + window - h, 0)
  pw = max((ow - 1) * stride + window - w, 0)
  x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
  if stride == window:  # non-overlapping windows: a reshape and a sum
    b, c = x.shape[0], x.shape[-1]
    summed = x.reshape(b, oh, window, ow, window, c).sum(axis=(2, 4))
  else:
    summed = jax.lax.reduce_window(x, np.zeros((), x.dtype), jax.lax.add,
                                   (1, window, window, 1), (1, stride, stride, 1), "VALID")

  def counts(n, o):
    starts = np.arange(o) * stride
    return np.minimum(starts + window, n) - starts

  div = np.outer(counts(h, oh), counts(w, ow)).astype(np.float32)[None, :, :, None]
  return summed / jnp.asarray(div, x.dtype)


def drop_path(x, rate: float, rng):
  """Stochastic depth per sample (timm DropPath): keep with 1-rate, scale by 1/(1-rate)."""
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))


def _shortcut(block: nn.Module, spec: BlockSpec, x, train: bool):
  """Avg-down projection (pool if strided, 1x1, BN, no act) or identity."""
  if not spec.shortcut:
    return x
  if spec.stride != 1:
    x = avg_pool_ceil(x, spec.stride)
  x = _conv1x1(spec.out_channels, "shortcut_conv", block.dtype)(x)
  return batch_norm(train, "shortcut_bn", dtype=block.dtype)(x)


class ResConvBlock(nn.Module):
  """conv1 1x1 -> PEG(stride) -> bn1 -> act -> conv2 3x3 -> bn2 -> act -> conv3 1x1 -> bn3 (γ=0)
  -> SE? -> drop-path? -> + shortcut -> act."""

  spec: BlockSpec
  act: str
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    s, act = self.spec, _ACTS[self.act]
    y = _conv1x1(s.width, "conv1", self.dtype)(x)
    y = _peg(s.width, s.stride, "peg", self.dtype)(y)
    y = act(batch_norm(train, "bn1", dtype=self.dtype)(y))
    y = _conv(s.width, 3, 1, 1, "conv2", self.dtype)(y)
    y = act(batch_norm(train, "bn2", dtype=self.dtype)(y))
    y = _conv1x1(s.out_channels, "conv3", self.dtype)(y)
    y = batch_norm(train, "bn3", zero_init=True, dtype=self.dtype)(y)
    if s.se:
      r = bs.se_width(s.out_channels)
      g = jnp.mean(y, axis=(1, 2), keepdims=True)
      g = nn.relu(_conv1x1(r, "se_fc1", self.dtype, bias_fan_in=s.out_channels)(g))
      g = _conv1x1(s.out_channels, "se_fc2", self.dtype, bias_fan_in=r)(g)
      y = y * jax.nn.sigmoid(g)
    if train and s.drop_path > 0:
      y = drop_path(y, s.drop_path, self.make_rng("dropout"))
    return act(y + _shortcut(self, s, x, train))


class ResAttBlock(nn.Module):
  """proj: 1x1 -> PEG(stride) -> BN; net: act -> MHSA -> BN -> act -> 1x1 -> BN (γ=0);
  + shortcut -> act. No SE, no drop-path."""

  spec: BlockSpec
  act: str
  dim_head: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    s, act = self.spec, _ACTS[self.act]
    y = _conv1x1(s.width, "proj_conv", self.dtype)(x)
    y = _peg(s.width, s.stride, "proj_peg", self.dtype)(y)
    y = act(batch_norm(train, "proj_bn", dtype=self.dtype)(y))
    y = MHSA(s.heads, self.dim_head, self.dtype, kaiming_fan_out, name="attn")(y)
    y = act(batch_norm(train, "attn_bn", dtype=self.dtype)(y))
    y = _conv1x1(s.out_channels, "out_conv", self.dtype)(y)
    y = batch_norm(train, "out_bn", zero_init=True, dtype=self.dtype)(y)
    return act(y + _shortcut(self, s, x, train))


class EmptyStage(nn.Module):
  """A stage without blocks: conv3x3 stride 2 pad 1 -> BN -> act (official `num_blocks == 0`)."""

  spec: BlockSpec
  act: str
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    s = self.spec
    x = _conv(s.out_channels, 3, s.stride, 1, "conv", self.dtype)(x)
    return _ACTS[self.act](batch_norm(train, "bn", dtype=self.dtype)(x))


# The three parts of a BossNet, called inside a compact method: their layers become the caller's
# (`conv1`, `bn1`, `layer{s}_{i}`, `fc`, as the official state_dict names them). BossNet is the
# three in a row; a latency table (latency.py) times each on its own.


def stem(x, cfg: BossNetConfig, dtype: Dtype, train: bool):
  """conv 7x7/2 -> BN -> act -> max-pool 3x3/2."""
  x = _conv(cfg.stem_channels, 7, 2, 3, "conv1", dtype)(x)
  x = _ACTS[cfg.act](batch_norm(train, "bn1", dtype=dtype)(x))
  return max_pool(x, 3, 2, 1)  # On CPU: window taps (select-and-scatter is slow there).


def blocks(x, specs, cfg: BossNetConfig, dtype: Dtype, train: bool):
  """The residual blocks (or empty stages) of `specs`, in order."""
  for spec in specs:
    if spec.kind == "conv":
      block = ResConvBlock(spec, cfg.act, dtype, name=spec.name)
    elif spec.kind == "att":
      block = ResAttBlock(spec, cfg.act, cfg.dim_head, dtype, name=spec.name)
    else:
      block = EmptyStage(spec, cfg.act, dtype, name=spec.name)
    x = block(x, train)
  return x


def head(x, cfg: BossNetConfig):
  """Global average pool (in float32) -> fc."""
  x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
  fc = nn.Dense(cfg.num_classes, dtype=jnp.float32, kernel_init=torch_default_init,
                bias_init=torch_default_bias_init(cfg.num_features), name="fc")
  return fc(x)


class BossNet(nn.Module):
  """The retraining network: stem, 4 stages from the encoding, global average pool, fc."""

  config: BossNetConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False, features_only: bool = False):
    cfg = self.config
    if x.ndim != 4 or x.shape[-1] != 3:
      raise BossNetSpecError(f"BossNet takes NHWC images with 3 channels, got shape {x.shape}.")
    bs.check_resolution(int(x.shape[1]), int(x.shape[2]))
    x = stem(x.astype(self.dtype), cfg, self.dtype, train)
    x = blocks(x, layout(cfg), cfg, self.dtype, train)
    return x if features_only else head(x, cfg)


def build(model: str | BossNetConfig | Any, dtype: Dtype = jnp.float32, **config) -> BossNet:
  """A BossNet from a model name, an architecture string, a stage encoding or a config."""
  return BossNet(resolve_config(model, **config), dtype)


# ------------------------------------------------------------------------------------------------
# Initialisation, evaluation helpers.


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(model: BossNet, key, resolution: int):
  return model.init(key, jnp.zeros((1, resolution, resolution, 3), jnp.float32), train=False)


def init_variables(model: BossNet, key, resolution: int = 224) -> dict:
  """{'params', 'batch_stats'} of a fresh BossNet (jitted once per model configuration)."""
  bs.check_resolution(resolution)
  return _init(model, key, resolution)


def variable_shapes(model: BossNet, resolution: int = 64) -> dict:
  """The variable tree as ShapeDtypeStructs, without computing anything."""
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)),
                         train=False))


def count_params(tree: Mapping) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@functools.partial(jax.jit, static_argnums=(0,))
def _eval_logits(model: BossNet, variables, images):
  return model.apply(variables, images, train=False)


def eval_logits(model: BossNet, variables, images):
  """Pure eval-mode forward (BN running statistics, no drop-path): logits in float32."""
  return _eval_logits(model, variables, images)
