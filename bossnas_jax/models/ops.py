"""The supernet's candidate ops (docs/method.md#candidate-ops): ResConv and ResAtt, each with two
entry branches.

An op at scale d takes either same-scale input (`down=False`) or input one scale finer
(`down=True`, the official `*_d` branch: entry convs at the fine resolution, then a stride-2 PEG,
and a stride-2 3x3 shortcut). The two entries have disjoint parameters (names ending in `_d` belong
to the down entry); the trunk after the entry is shared. A path therefore only touches the entry it
uses, which is what lets a training step differentiate a sub-tree of the block's parameters.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from bossnas_jax import search_space as ss
from bossnas_jax.models.layers import MHSA, Dtype, batch_norm, conv, conv1x1, peg


def _shortcut(x, out_channels: int, down: bool, train: bool, dtype: Dtype):
  """Identity, or the projection shortcut: conv (1x1, or 3x3/s2 from the finer scale) + BN + ReLU.

  The ReLU on the projection shortcut is the official code's (unusual, but the method's). Called
  from an op's compact method, so the modules it makes are that op's children.
  """
  if down:
    y = conv(out_channels, 3, 2, 1, "shortcut_conv_d", dtype)(x)
    y = batch_norm(train, "shortcut_bn_d", dtype=dtype)(y)
    return nn.relu(y)
  if x.shape[-1] == out_channels:
    return x
  y = conv1x1(out_channels, "shortcut_conv", dtype)(x)
  y = batch_norm(train, "shortcut_bn", dtype=dtype)(y)
  return nn.relu(y)


class ResConv(nn.Module):
  """ResNet bottleneck (expansion 4) with a PEG after the first 1x1 conv."""

  out_channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, down: bool, train: bool):
    p = self.out_channels // 4
    sfx = ss.DOWN_SUFFIX if down else ""
    y = conv1x1(p, "conv1" + sfx, self.dtype)(x)
    y = peg(p, 2 if down else 1, "peg" + sfx, self.dtype)(y)
    y = batch_norm(train, "bn1" + sfx, dtype=self.dtype)(y)
    y = nn.relu(y)
    y = conv(p, 3, 1, 1, "conv2", self.dtype)(y)
    y = batch_norm(train, "bn2", dtype=self.dtype)(y)
    y = nn.relu(y)
    y = conv1x1(self.out_channels, "conv3", self.dtype)(y)
    y = batch_norm(train, "bn3", zero_init=True, dtype=self.dtype)(y)
    return nn.relu(y + _shortcut(x, self.out_channels, down, train, self.dtype))


class ResAtt(nn.Module):
  """BoTNet-like block: 1x1 projection + PEG + BN, then ReLU, MHSA, BN, ReLU, 1x1, BN."""

  out_channels: int
  heads: int
  dim_head: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, down: bool, train: bool):
    a_in = self.out_channels // 4
    sfx = ss.DOWN_SUFFIX if down else ""
    y = conv1x1(a_in, "proj_conv" + sfx, self.dtype)(x)
    y = peg(a_in, 2 if down else 1, "proj_peg" + sfx, self.dtype)(y)
    y = batch_norm(train, "proj_bn" + sfx, dtype=self.dtype)(y)
    y = nn.relu(y)
    y = MHSA(self.heads, self.dim_head, self.dtype, name="attn")(y)
    y = batch_norm(train, "attn_bn", dtype=self.dtype)(y)
    y = nn.relu(y)
    y = conv1x1(self.out_channels, "out_conv", self.dtype)(y)
    y = batch_norm(train, "out_bn", zero_init=True, dtype=self.dtype)(y)
    return nn.relu(y + _shortcut(x, self.out_channels, down, train, self.dtype))
