"""The key tables: every official PyTorch tensor name of a BossNet or HyTra search checkpoint and
the Flax leaf it maps to (docs/method.md#checkpoint-layouts), generated from the model
description. `state_dicts.py` checks each table against the Flax variable tree.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from bossnas_jax import search_space as ss
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.models import heads, supernet


@dataclasses.dataclass(frozen=True)
class Entry:
  """One official tensor <-> one Flax leaf. `part` locates a Flax variables dict in the output
  tree (() for a BossNet), `collection` is 'params' or 'batch_stats', `path` the leaf inside it.
  `layout`: 'conv' (OIHW <-> HWIO), 'dense1x1' ((O,I,1,1) <-> (I,O)), 'linear' ((O,I) <-> (I,O))
  or 'vector'."""

  key: str
  part: tuple[str, ...]
  collection: str
  path: tuple[str, ...]
  layout: str


class Table:
  def __init__(self):
    self.entries: list[Entry] = []
    self.bn_prefixes: list[str] = []  # BatchNorms, for num_batches_tracked on export

  def _add(self, key, part, collection, path, layout):
    self.entries.append(Entry(key, tuple(part), collection, tuple(path), layout))

  def conv(self, key, part, path, bias=False):
    self._add(f"{key}.weight", part, "params", (*path, "kernel"), "conv")
    if bias:
      self._add(f"{key}.bias", part, "params", (*path, "bias"), "vector")

  def dense1x1(self, key, part, path, bias=False):
    self._add(f"{key}.weight", part, "params", (*path, "kernel"), "dense1x1")
    if bias:
      self._add(f"{key}.bias", part, "params", (*path, "bias"), "vector")

  def linear(self, key, part, path):
    self._add(f"{key}.weight", part, "params", (*path, "kernel"), "linear")
    self._add(f"{key}.bias", part, "params", (*path, "bias"), "vector")

  def bn(self, key, part, path):
    self._add(f"{key}.weight", part, "params", (*path, "scale"), "vector")
    self._add(f"{key}.bias", part, "params", (*path, "bias"), "vector")
    self._add(f"{key}.running_mean", part, "batch_stats", (*path, "mean"), "vector")
    self._add(f"{key}.running_var", part, "batch_stats", (*path, "var"), "vector")
    self.bn_prefixes.append(key)


def bossnet_table(config: bs.BossNetConfig) -> Table:
  t = Table()
  t.conv("conv1", (), ("conv1",))
  t.bn("bn1", (), ("bn1",))
  for s in bs.layout(config):
    tp, n = s.torch_prefix, (s.name,)
    if s.kind == "empty":
      t.conv(f"{tp}.0", (), (*n, "conv"))
      t.bn(f"{tp}.1", (), (*n, "bn"))
      continue
    if s.kind == "conv":
      t.dense1x1(f"{tp}.conv1", (), (*n, "conv1"))
      t.conv(f"{tp}.peg.conv", (), (*n, "peg"), bias=True)
      t.bn(f"{tp}.bn1", (), (*n, "bn1"))
      t.conv(f"{tp}.conv2", (), (*n, "conv2"))
      t.bn(f"{tp}.bn2", (), (*n, "bn2"))
      t.dense1x1(f"{tp}.conv3", (), (*n, "conv3"))
      t.bn(f"{tp}.bn3", (), (*n, "bn3"))
      if s.se:
        t.dense1x1(f"{tp}.se.fc1", (), (*n, "se_fc1"), bias=True)
        t.dense1x1(f"{tp}.se.fc2", (), (*n, "se_fc2"), bias=True)
      sc = "downsample"
    else:
      t.dense1x1(f"{tp}.proj.0", (), (*n, "proj_conv"))
      t.conv(f"{tp}.proj.1.conv", (), (*n, "proj_peg"), bias=True)
      t.bn(f"{tp}.proj.2", (), (*n, "proj_bn"))
      t.dense1x1(f"{tp}.net.1.to_qkv", (), (*n, "attn", "qkv"))
      t.bn(f"{tp}.net.2", (), (*n, "attn_bn"))
      t.dense1x1(f"{tp}.net.4", (), (*n, "out_conv"))
      t.bn(f"{tp}.net.5", (), (*n, "out_bn"))
      sc = "shortcut"
    if s.shortcut:  # index 0 is the pool (AvgPool2d or Identity): no tensors
      t.dense1x1(f"{tp}.{sc}.1", (), (*n, "shortcut_conv"))
      t.bn(f"{tp}.{sc}.2", (), (*n, "shortcut_bn"))
  t.linear("fc", (), ("fc",))
  return t


def _supernet_op(t: Table, dims: ss.Dims, block: int, layer: int, op: int, prefix: str,
                 part: tuple[str, ...]) -> None:
  d = ss.op_scale(op)
  n = (supernet.op_name(layer, op),)
  tp = f"{prefix}_blocks.{block}._block_layers.{layer}._mix_ops.{op}"
  proj = block == 0 and layer == 0  # in = width(d) != out: projection shortcut
  down = ss.has_down_branch(block, layer, d)
  if ss.is_attention(op):
    for sfx, src in [("", "proj")] + ([("_d", "proj_d")] if down else []):
      t.dense1x1(f"{tp}.{src}.0", part, (*n, "proj_conv" + sfx))
      t.conv(f"{tp}.{src}.1.conv", part, (*n, "proj_peg" + sfx), bias=True)
      t.bn(f"{tp}.{src}.2", part, (*n, "proj_bn" + sfx))
    t.dense1x1(f"{tp}.net.1.to_qkv", part, (*n, "attn", "qkv"))
    t.bn(f"{tp}.net.2", part, (*n, "attn_bn"))
    t.dense1x1(f"{tp}.net.4", part, (*n, "out_conv"))
    t.bn(f"{tp}.net.5", part, (*n, "out_bn"))
    sc = "shortcut"
  else:
    for sfx in [""] + (["_d"] if down else []):
      t.dense1x1(f"{tp}.conv1{sfx}", part, (*n, "conv1" + sfx))
      t.conv(f"{tp}.peg{sfx}.conv", part, (*n, "peg" + sfx), bias=True)
      t.bn(f"{tp}.bn1{sfx}", part, (*n, "bn1" + sfx))
    t.conv(f"{tp}.conv2", part, (*n, "conv2"))
    t.bn(f"{tp}.bn2", part, (*n, "bn2"))
    t.dense1x1(f"{tp}.conv3", part, (*n, "conv3"))
    t.bn(f"{tp}.bn3", part, (*n, "bn3"))
    sc = "downsample"
  if proj:
    t.dense1x1(f"{tp}.{sc}.0", part, (*n, "shortcut_conv"))
    t.bn(f"{tp}.{sc}.1", part, (*n, "shortcut_bn"))
  if down:
    t.conv(f"{tp}.{sc}_d.0", part, (*n, "shortcut_conv_d"))
    t.bn(f"{tp}.{sc}_d.1", part, (*n, "shortcut_bn_d"))


def _supernet_block_table(t: Table, dims: ss.Dims, block: int, prefix: str,
                          part: tuple[str, ...]) -> None:
  if block == 0:
    t.conv(f"{prefix}conv1", part, ("stem", "conv"))
    t.bn(f"{prefix}bn1", part, ("stem", "bn"))
    for d in range(ss.NUM_SCALES):
      key = f"{prefix}_blocks.0._block_layers.0.downsamples.{dims.stem_channels}_{dims.width(d)}"
      t.conv(f"{key}.0", part, (f"adapter{d}", "dw"))
      t.dense1x1(f"{key}.1", part, (f"adapter{d}", "proj"))
      t.bn(f"{key}.2", part, (f"adapter{d}", "bn"))
  for layer in range(ss.LAYERS_PER_BLOCK):
    for op in ss.ops_in_block(block):
      _supernet_op(t, dims, block, layer, op, prefix, part)


def _neck_table(t: Table, dims: ss.Dims, prefix: str, part: tuple[str, ...]) -> None:
  for d in range(1, ss.NUM_SCALES):
    key, name = f"{prefix}fix_channels.{dims.channels(d)}", heads.fix_channels_name(d)
    t.conv(f"{key}.0", part, (name + "_dw",))
    t.dense1x1(f"{key}.1", part, (name + "_proj",))
    t.bn(f"{key}.2", part, (name + "_bn",))
  _mlp_table(t, prefix, part)


def _mlp_table(t: Table, prefix: str, part: tuple[str, ...]) -> None:
  t.linear(f"{prefix}fc0", part, ("fc0",))
  t.bn(f"{prefix}bn0", part, ("bn0",))
  t.linear(f"{prefix}fc1", part, ("fc1",))


@dataclasses.dataclass(frozen=True)
class SupernetSizes:
  """What a search checkpoint's shapes cannot tell apart from its keys: the sizes."""

  dims: ss.Dims = ss.Dims()
  neck_hidden: int = 4096
  neck_out: int = 256
  pred_hidden: int = 4096

  def to_dict(self) -> dict:
    return {"width_multiplier": self.dims.width_multiplier, "resolution": self.dims.resolution,
            "dim_head": self.dims.dim_head, "neck_hidden": self.neck_hidden,
            "neck_out": self.neck_out, "pred_hidden": self.pred_hidden}

  @classmethod
  def from_dict(cls, d: Mapping) -> SupernetSizes:
    return cls(ss.Dims(d["width_multiplier"], d["resolution"], d["dim_head"]), d["neck_hidden"],
               d["neck_out"], d["pred_hidden"])


# Parts of a search checkpoint: (output part, official prefix of block b, required).
def _supernet_parts(b: int) -> list[tuple[tuple[str, str], str, str, bool]]:
  blk = f"block{b}"
  return [(("backbone", blk), "online_backbone.", "block", True),
          (("target_backbone", blk), "target_backbone.", "block", False),
          (("necks", blk), f"online_necks.{b}.", "neck", True),
          (("target_necks", blk), f"target_necks.{b}.", "neck", False),
          (("predictors", blk), f"heads.{b}.predictor.", "predictor", True)]


def supernet_table(sizes: SupernetSizes, present: set[str] | None) -> Table:
  """Table of the parts to read: required ones always, optional ones (the target side) when any
  of their keys is `present` (all of them when `present` is None)."""
  t = Table()
  for b in range(ss.NUM_BLOCKS):
    for part, prefix, kind, required in _supernet_parts(b):
      if not required and present is not None and not any(k.startswith(prefix) for k in present):
        continue
      if kind == "block":
        _supernet_block_table(t, sizes.dims, b, prefix, part)
      elif kind == "neck":
        _neck_table(t, sizes.dims, prefix, part)
      else:
        _mlp_table(t, prefix, part)
  return t


# Keys of a search checkpoint skipped on purpose, with the reason.
SUPERNET_IGNORE = [
    (re.compile(r"^(backbone|online_net|target_net|online_neck|target_neck|head)\."),
     "alias of another prefix (docs/method.md#supernet-keys)"),
    (re.compile(r"^(online|target)_backbone\._stem\.[01]\."), "alias of conv1 / bn1"),
    (re.compile(r"^(online|target)_backbone\._blocks\.0\._block_layers\.0\._mix_ops\.\d+\."
                r"(conv1_d|peg_d|bn1_d|downsample_d|proj_d|shortcut_d)\."),
     "not used by bossnas_jax: the down-scale branch of block 0, layer 0 (built by the official "
     "code, never run)"),
]
NUM_BATCHES = "BatchNorm num_batches_tracked (not needed)"
