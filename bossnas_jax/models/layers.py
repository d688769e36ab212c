"""Building blocks shared by the supernet and BossNet: PyTorch-faithful convs, BN, PEG, MHSA.

Everything is NHWC. 1x1 convolutions are `nn.Dense` on the channel axis: XLA:CPU runs their weight
gradients several times faster than as convolutions (../shared/STACK.md), and the maths is the same.
Initialisers follow PyTorch's defaults (SPEC I.2) so that a freshly built model matches the official
one in distribution.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# PyTorch's default conv/linear weight init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int):
  """PyTorch's default bias init, U(+-1/sqrt(fan_in))."""
  bound = 1.0 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def batch_norm(train: bool, name: str, zero_init: bool = False, dtype: Dtype = jnp.float32):
  """BatchNorm with PyTorch's eps 1e-5 and momentum 0.1 (Flax momentum 0.9).

  Without an `axis_name` the statistics are per device inside shard_map, as BossNAS wants.
  """
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones, name=name)


def conv1x1(features: int, name: str, dtype: Dtype, use_bias: bool = False,
            kernel_init=torch_default_init):
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=kernel_init, name=name)


def conv(features: int, kernel: int, stride: int, padding: int, name: str, dtype: Dtype,
         groups: int = 1, use_bias: bool = False, in_features: int | None = None):
  """A PyTorch-style conv: explicit symmetric padding ('SAME' pads differently at stride 2)."""
  bias_init = nn.initializers.zeros
  if use_bias:
    bias_init = torch_default_bias_init((in_features // groups) * kernel * kernel)
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride),
      padding=((padding, padding), (padding, padding)), feature_group_count=groups,
      use_bias=use_bias, dtype=dtype, kernel_init=torch_default_init, bias_init=bias_init,
      name=name)


def peg(channels: int, stride: int, name: str, dtype: Dtype):
  """PEG: depthwise 3x3 conv with bias, stride 1 or 2, pad 1; replaces its input (no residual)."""
  return conv(channels, 3, stride, 1, name, dtype, groups=channels, use_bias=True,
              in_features=channels)


def patchify(channels: int, stride: int, name: str, dtype: Dtype):
  """Depthwise conv with kernel = stride, no bias: the first step of the stem adapters and of the
  projector's `fix_channels`."""
  return conv(channels, stride, stride, 0, name, dtype, groups=channels)


class MHSA(nn.Module):
  """Multi-head self-attention over all positions, standard form (D4): softmax(q kᵀ/√d) v.

  The qkv projection is one bias-free 1x1 conv to 3·heads·dim_head channels, head-major:
  q = channels [0, h·dh), k = [h·dh, 2h·dh), v = the rest; head i of each uses [i·dh, (i+1)·dh).
  No relative-position embedding and no output projection (SPEC I.1.2).
  """

  heads: int
  dim_head: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, _ = x.shape
    inner = self.heads * self.dim_head
    qkv = conv1x1(3 * inner, "qkv", self.dtype)(x)
    qkv = qkv.reshape(b, h * w, 3, self.heads, self.dim_head)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q = q * self.dim_head**-0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    # Softmax in float32 whatever the compute dtype: logits of HW=3136 keys lose mass in bf16.
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v)
    return out.reshape(b, h, w, inner)
