"""Import official PyTorch checkpoints into Flax variables, and export them back.

Two kinds of state_dict (docs/method.md#checkpoint-layouts):

* BossNet retraining models (`conv1`, `bn1`, `layer{s}.{i}.*`, `fc`): any encoding, the three
  named models included. `import_bossnet(state_dict, model)` -> BossNet variables.
* HyTra search checkpoints (`SiameseSupernetsHyTra`): the online backbone (`online_backbone.`),
  the projector necks (`online_necks.{b}.`) and the predictors (`heads.{b}.predictor.`), plus the
  target backbone and necks when present. `import_supernet(state_dict)` -> a tree
  {'backbone': {'block0': vars, ...}, 'necks': {...}, 'predictors': {...}, 'target_backbone': ...,
  'target_necks': ...}, each `vars` a Flax {'params', 'batch_stats'} dict as supernet.init_block,
  heads.Projector and heads.Predictor make them.

The mapping is a table generated from the model description, checked against the Flax variable
tree (jax.eval_shape), so every Flax variable has exactly one official key. Layouts: conv OIHW ->
HWIO (depthwise (C,1,k,k) -> (k,k,1,C)); 1x1 conv (O,I,1,1) -> Dense (I,O); Linear (O,I) -> (I,O);
BatchNorm weight/bias -> params scale/bias, running_mean/var -> batch_stats mean/var.
Every key that is unmatched, missing or mis-shaped is reported by name (`ConversionReport`) and
makes the import fail; keys skipped on purpose (`num_batches_tracked`, the aliases of a search
checkpoint, the never-run `*_d` branches of block 0 layer 0) are listed with their reason.

Input files: an `.npz` of the state_dict's arrays (keys as in PyTorch), or a `.pth` when PyTorch is
installed (`pip install 'bossnas_jax[torch]'`). Output: a verified Orbax checkpoint
(checkpoint_io; checksums per array) holding the variables and a JSON description.

    python -m bossnas_jax.convert import bossnet_t0.pth out/t0 --model bossnet_t0
    python -m bossnas_jax.convert import search.pth out/supernet --model supernet
    python -m bossnas_jax.convert export out/t0 t0.npz          # Flax -> state_dict arrays
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import zipfile
from collections import Counter
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bossnas_jax import checkpoint_io
from bossnas_jax import search_space as ss
from bossnas_jax.infra import errors
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.models import heads, supernet

FORMAT = "bossnas_jax/converted-v1"
SUPERNET = "supernet"


class ConversionError(errors.UserError, ValueError):
  """A state_dict that cannot be read or does not match the model."""


# ------------------------------------------------------------------------------------------------
# The table.


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


class _Table:
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


def _bossnet_table(config: bs.BossNetConfig) -> _Table:
  t = _Table()
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


def _supernet_op(t: _Table, dims: ss.Dims, block: int, layer: int, op: int, prefix: str,
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


def _supernet_block_table(t: _Table, dims: ss.Dims, block: int, prefix: str,
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


def _neck_table(t: _Table, dims: ss.Dims, prefix: str, part: tuple[str, ...]) -> None:
  for d in range(1, ss.NUM_SCALES):
    key, name = f"{prefix}fix_channels.{dims.channels(d)}", heads.fix_channels_name(d)
    t.conv(f"{key}.0", part, (name + "_dw",))
    t.dense1x1(f"{key}.1", part, (name + "_proj",))
    t.bn(f"{key}.2", part, (name + "_bn",))
  _mlp_table(t, prefix, part)


def _mlp_table(t: _Table, prefix: str, part: tuple[str, ...]) -> None:
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


def _supernet_table(sizes: SupernetSizes, present: set[str] | None) -> _Table:
  """Table of the parts to read: required ones always, optional ones (the target side) when any
  of their keys is `present` (all of them when `present` is None)."""
  t = _Table()
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
_SUPERNET_IGNORE = [
    (re.compile(r"^(backbone|online_net|target_net|online_neck|target_neck|head)\."),
     "alias of another prefix (docs/method.md#supernet-keys)"),
    (re.compile(r"^(online|target)_backbone\._stem\.[01]\."), "alias of conv1 / bn1"),
    (re.compile(r"^(online|target)_backbone\._blocks\.0\._block_layers\.0\._mix_ops\.\d+\."
                r"(conv1_d|peg_d|bn1_d|downsample_d|proj_d|shortcut_d)\."),
     "not used by bossnas_jax: the down-scale branch of block 0, layer 0 (built by the official "
     "code, never run)"),
]
_NUM_BATCHES = "BatchNorm num_batches_tracked (not needed)"


# ------------------------------------------------------------------------------------------------
# Layout transforms.


def _to_flax(a: np.ndarray, layout: str) -> np.ndarray:
  if layout == "conv":
    return np.transpose(a, (2, 3, 1, 0))
  if layout == "dense1x1":
    return a[:, :, 0, 0].T
  if layout == "linear":
    return a.T
  return a


def _to_torch(a: np.ndarray, layout: str) -> np.ndarray:
  if layout == "conv":
    return np.transpose(a, (3, 2, 0, 1))
  if layout == "dense1x1":
    return a.T[:, :, None, None]
  if layout == "linear":
    return a.T
  return a


def _torch_shape(flax_shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  return tuple(_to_torch(np.empty(flax_shape, np.uint8), layout).shape)


# ------------------------------------------------------------------------------------------------
# The report.


@dataclasses.dataclass
class ConversionReport:
  """What an import did with every key. `unmatched`, `missing` and `mis_shaped` are errors."""

  what: str = ""
  matched: int = 0
  unmatched: list[str] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)
  mis_shaped: list[str] = dataclasses.field(default_factory=list)
  ignored: dict[str, str] = dataclasses.field(default_factory=dict)  # key -> reason

  @property
  def ok(self) -> bool:
    return not (self.unmatched or self.missing or self.mis_shaped)

  def ignored_counts(self) -> dict[str, int]:
    return dict(Counter(self.ignored.values()))

  def summary(self) -> str:
    lines = [f"{self.what}: {self.matched} keys matched"]
    for title, items in (("unmatched (no Flax variable takes them)", self.unmatched),
                         ("missing (Flax variables no key provides)", self.missing),
                         ("mis-shaped", self.mis_shaped)):
      if items:
        lines.append(f"{len(items)} {title}:")
        lines += [f"  {k}" for k in items]
    for reason, n in sorted(self.ignored_counts().items()):
      lines.append(f"{n} ignored: {reason}")
    return "\n".join(lines)

  def raise_if_errors(self) -> None:
    if not self.ok:
      raise ConversionError(self.summary())

  def to_dict(self) -> dict:
    return {"what": self.what, "matched": self.matched, "ignored": self.ignored_counts()}


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]):
  for p in path:
    tree = tree[p]
  return tree


def _flat(tree: Mapping, prefix=()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, (*prefix, k)))
    else:
      out[(*prefix, k)] = v
  return out


def _check_table(table: _Table, expected: Mapping, what: str) -> dict[tuple, tuple[int, ...]]:
  """The table must cover the Flax tree exactly; a mismatch is a bug in this module."""
  exp = {k: tuple(v.shape) for k, v in _flat(expected).items()}
  got = {(*e.part, e.collection, *e.path) for e in table.entries}
  if set(exp) != got:
    extra = sorted("/".join(k) for k in got - set(exp))
    lack = sorted("/".join(k) for k in set(exp) - got)
    raise RuntimeError(f"convert.py's {what} table is out of sync with the Flax model: "
                       f"table-only {extra[:10]}, Flax-only {lack[:10]}")
  return exp


def _import(state_dict: Mapping[str, np.ndarray], table: _Table, expected: Mapping,
            ignore, what: str) -> tuple[dict, ConversionReport]:
  exp = _check_table(table, expected, what)
  report = ConversionReport(what=what)
  by_key = {e.key: e for e in table.entries}
  out: dict = {}
  for key, value in state_dict.items():
    entry = by_key.get(key)
    if entry is None:
      reason = _NUM_BATCHES if key.endswith(".num_batches_tracked") else next(
          (r for pat, r in ignore if pat.search(key)), None)
      if reason is None:
        report.unmatched.append(f"{key} {tuple(np.shape(value))}")
      else:
        report.ignored[key] = reason
      continue
    flax_shape = exp[(*entry.part, entry.collection, *entry.path)]
    want = _torch_shape(flax_shape, entry.layout)
    got = tuple(np.shape(value))
    if got != want:
      report.mis_shaped.append(f"{key}: shape {got}, expected {want}")
      continue
    arr = _to_flax(np.asarray(value, np.float32), entry.layout)
    _set(out, (*entry.part, entry.collection, *entry.path), np.ascontiguousarray(arr))
    report.matched += 1
  for e in table.entries:
    if e.key not in state_dict:
      report.missing.append(f"{e.key} -> {'/'.join((*e.part, e.collection, *e.path))}")
  return out, report


def _export(variables: Mapping, table: _Table) -> dict[str, np.ndarray]:
  out = {}
  for e in table.entries:
    try:
      a = np.asarray(jax.device_get(_get(variables, (*e.part, e.collection, *e.path))))
    except KeyError:
      raise ConversionError(
          f"export: the variables lack {'/'.join((*e.part, e.collection, *e.path))} "
          f"(official key {e.key}).") from None
    out[e.key] = np.ascontiguousarray(_to_torch(a.astype(np.float32), e.layout))
  for p in table.bn_prefixes:
    out[f"{p}.num_batches_tracked"] = np.zeros((), np.int64)
  return out


# ------------------------------------------------------------------------------------------------
# BossNet.


def _bossnet_shapes(config: bs.BossNetConfig):
  from bossnas_jax.models.bossnet import BossNet, variable_shapes

  return variable_shapes(BossNet(config), 64)


def infer_bossnet_encoding(state_dict: Mapping[str, Any]) -> tuple[tuple[int, ...], ...] | None:
  """The stage encoding a BossNet state_dict was made with (None if its keys don't say)."""
  stages = []
  for s in range(1, bs.NUM_STAGES + 1):
    if f"layer{s}.0.0.weight" in state_dict:
      stages.append(())
      continue
    idx = sorted({int(m.group(1)) for k in state_dict
                  if (m := re.match(rf"layer{s}\.(\d+)\.", k))})
    if idx != list(range(len(idx))):
      return None
    kinds = []
    for i in idx:
      if f"layer{s}.{i}.conv1.weight" in state_dict:
        kinds.append(1)
      elif f"layer{s}.{i}.proj.0.weight" in state_dict:
        kinds.append(0)
      else:
        return None
    stages.append(tuple(kinds))
  return tuple(stages)


def _check_bossnet_fits(state_dict: Mapping[str, Any], config: bs.BossNetConfig) -> None:
  enc = infer_bossnet_encoding(state_dict)
  if enc is not None and enc != config.encoding:
    raise ConversionError(
        f"the checkpoint holds encoding {ss.format_stage_encoding(enc)}, the model "
        f"{config.name or 'config'} has {ss.format_stage_encoding(config.encoding)}; pick the "
        "model the checkpoint was trained as.")
  has_se = any(".se.fc1." in k for k in state_dict)
  has_conv = any(t == 1 for s in config.encoding for t in s)
  if has_conv and has_se != config.se:
    # The activation has no weights, so it cannot be read from the checkpoint: the hint names it
    # too (the official networks with SE use SiLU, T0-nose without SE uses ReLU).
    hint = ("--model bossnet_t0_nose (ReLU, no SE), or for another architecture --se no with the "
            "activation it was trained with (--act relu for the official networks without SE)"
            if not has_se else
            "--model bossnet_t0 / bossnet_t1 (SiLU, SE), or for another architecture --se yes "
            "with the activation it was trained with (--act silu for the official SE networks)")
    raise ConversionError(
        f"the checkpoint {'has' if has_se else 'has no'} SE modules (se.fc1/se.fc2), the model "
        f"has se={config.se}; use {hint}.")


def import_bossnet(state_dict: Mapping[str, np.ndarray], model, *,
                   strict: bool = True) -> tuple[dict, ConversionReport]:
  """Official BossNet state_dict -> Flax {'params', 'batch_stats'} of `model` (a config, a model
  name or an architecture string). With strict (default), any unmatched, missing or mis-shaped
  key raises ConversionError listing them all."""
  config = bs.resolve_config(model)
  _check_bossnet_fits(state_dict, config)
  variables, report = _import(state_dict, _bossnet_table(config), _bossnet_shapes(config), [],
                              f"BossNet {config.name or ss.format_stage_encoding(config.encoding)}"
                              f" (activation {config.act}, SE {'on' if config.se else 'off'}; "
                              "the checkpoint records both)")
  if strict:
    report.raise_if_errors()
  return variables, report


def bossnet_state_dict_shapes(model) -> dict[str, tuple[int, ...]]:
  """The official state_dict of a BossNet: key -> PyTorch shape (num_batches_tracked included)."""
  config = bs.resolve_config(model)
  table = _bossnet_table(config)
  exp = _check_table(table, _bossnet_shapes(config), "BossNet")
  out = {e.key: _torch_shape(exp[(*e.part, e.collection, *e.path)], e.layout)
         for e in table.entries}
  out.update({f"{p}.num_batches_tracked": () for p in table.bn_prefixes})
  return out


def export_bossnet(variables: Mapping, model) -> dict[str, np.ndarray]:
  """Flax BossNet variables -> an official state_dict (numpy arrays, PyTorch layouts; BN
  num_batches_tracked set to 0), loadable with `load_state_dict(strict=True)`."""
  return _export(variables, _bossnet_table(bs.resolve_config(model)))


# ------------------------------------------------------------------------------------------------
# The supernet.


def supernet_shapes(sizes: SupernetSizes) -> dict:
  """The Flax variable tree of every part a search checkpoint can hold (ShapeDtypeStructs)."""
  dims = sizes.dims
  key = jax.random.key(0)
  proj = heads.Projector(dims, sizes.neck_hidden, sizes.neck_out)
  pred = heads.Predictor(sizes.pred_hidden, sizes.neck_out)
  neck = jax.eval_shape(lambda: proj.init(key, proj.init_inputs(), train=True,
                                          method=heads.Projector.call_all))
  predictor = jax.eval_shape(lambda: pred.init(key, jnp.zeros((1, sizes.neck_out)), train=True))
  out: dict = {}
  for b in range(ss.NUM_BLOCKS):
    block = jax.eval_shape(lambda b=b: supernet.init_block(dims, b, key))
    blk = f"block{b}"
    for side in ("backbone", "target_backbone"):
      out.setdefault(side, {})[blk] = block
    for side in ("necks", "target_necks"):
      out.setdefault(side, {})[blk] = neck
    out.setdefault("predictors", {})[blk] = predictor
  return out


def infer_supernet_sizes(state_dict: Mapping[str, Any], dim_head: int = 64,
                         resolution: int = 224) -> SupernetSizes:
  """Width multiplier and head sizes from the shapes of a search checkpoint."""
  try:
    stem = np.shape(state_dict["online_backbone.conv1.weight"])[0]
  except KeyError:
    raise ConversionError("not a HyTra search checkpoint: no online_backbone.conv1.weight "
                          "(for a BossNet state_dict pass a BossNet model).") from None
  wm = stem / ss.BASE_STEM_CHANNELS
  neck = state_dict.get("online_necks.0.fc0.weight")
  neck_out = state_dict.get("online_necks.0.fc1.weight")
  pred = state_dict.get("heads.0.predictor.fc0.weight")
  try:
    dims = ss.Dims(wm, resolution, dim_head)
  except ValueError as e:
    raise ConversionError(f"search checkpoint with a {stem}-channel stem: {e}") from None
  return SupernetSizes(
      dims,
      np.shape(neck)[0] if neck is not None else 4096,
      np.shape(neck_out)[0] if neck_out is not None else 256,
      np.shape(pred)[0] if pred is not None else 4096)


def import_supernet(state_dict: Mapping[str, np.ndarray], sizes: SupernetSizes | None = None, *,
                    dim_head: int = 64, strict: bool = True) -> tuple[dict, ConversionReport]:
  """Official search checkpoint state_dict -> {'backbone': {'block{b}': vars}, 'necks': ...,
  'predictors': ..., and 'target_backbone' / 'target_necks' when the checkpoint has them}."""
  sizes = sizes or infer_supernet_sizes(state_dict, dim_head)
  table = _supernet_table(sizes, set(state_dict))
  parts = {e.part for e in table.entries}
  shapes = supernet_shapes(sizes)
  expected = {}
  for part in parts:
    _set(expected, part, _get(shapes, part))
  variables, report = _import(state_dict, table, expected, _SUPERNET_IGNORE,
                              f"HyTra supernet (width x{sizes.dims.width_multiplier})")
  if strict:
    report.raise_if_errors()
  return variables, report


def export_supernet(variables: Mapping, sizes: SupernetSizes = SupernetSizes()) -> dict:
  """Flax supernet tree (as import_supernet returns) -> official keys for the parts present.

  The never-run `*_d` modules of block 0 layer 0 and the alias prefixes are not written, so a
  PyTorch `SiameseSupernetsHyTra` needs `strict=False` to load the result."""
  table = _supernet_table(sizes, None)
  present = {e for e in table.entries if e.part[0] in variables}
  sub = _Table()
  sub.entries = [e for e in table.entries if e in present]
  sub.bn_prefixes = [p for p in table.bn_prefixes
                     if any(e.key.startswith(p + ".") for e in sub.entries)]
  return _export(variables, sub)


# ------------------------------------------------------------------------------------------------
# Files.


def _unwrap(obj, key: str | None, path: str) -> Mapping:
  if key is not None:
    if not isinstance(obj, Mapping) or key not in obj:
      raise ConversionError(f"{path}: no entry {key!r} at the top level.")
    obj = obj[key]
  elif isinstance(obj, Mapping) and not any(hasattr(v, "shape") for v in obj.values()):
    for k in ("state_dict", "model", "module"):
      if k in obj and isinstance(obj[k], Mapping):
        obj = obj[k]
        break
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path}: expected a state_dict (a mapping of names to tensors).")
  if obj and all(k.startswith("module.") for k in obj):
    obj = {k[len("module."):]: v for k, v in obj.items()}
  return obj


def load_state_dict(path: str, *, key: str | None = None,
                    allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """Reads a state_dict as numpy arrays from an `.npz` or (with PyTorch) a `.pth`.

  A checkpoint that wraps the state_dict (mmcv's {'state_dict': ...}, DeiT's {'model': ...}) is
  unwrapped; `key` picks the entry explicitly (e.g. 'model_ema'). A DDP 'module.' prefix is
  removed. `.pth` files load with torch.load(weights_only=True) unless `allow_pickle` (only for
  files you trust).
  """
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: no such file.")
  with open(path, "rb") as f:
    magic = f.read(4)
  # Both an .npz and a PyTorch >= 1.6 checkpoint are zip archives; an older one is a pickle
  # (protocol 2+ starts with 0x80). Anything else is not a checkpoint at all: say so, rather than
  # pass on the reader's advice about pickles.
  if magic != b"PK\x03\x04" and not (magic[:1] == b"\x80" and not path.endswith(".npz")):
    kind = ".npz (a zip archive of arrays)" if path.endswith(".npz") else (
        "PyTorch checkpoint (a zip archive or a pickle)")
    raise ConversionError(f"{path} is not a checkpoint: it is not a {kind}. Pass the file "
                          "torch.save or np.savez wrote.")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as z:
        raw = {k: np.asarray(z[k]) for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
      raise ConversionError(f"{path}: cannot read it as .npz ({type(e).__name__}: {e}); the file "
                            "is truncated or not an .npz of arrays.") from None
    return dict(_unwrap(raw, key, path))
  try:
    import torch
  except ImportError:
    raise ConversionError(
        f"{path}: reading PyTorch checkpoints needs PyTorch, an optional extra: "
        "pip install 'bossnas_jax[torch]'. Or save the state_dict as .npz where torch is "
        "installed: np.savez(out, **{k: v.numpy() for k, v in sd.items()}).") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
  except Exception as e:  # noqa: BLE001  (torch raises RuntimeError, UnpicklingError, EOFError...)
    hint = "" if allow_pickle else (" If the file is trusted and holds non-tensor objects, "
                                    "pass allow_pickle=True (--allow-pickle).")
    raise ConversionError(f"{path}: torch.load failed ({type(e).__name__}: {e}); the file may "
                          f"be truncated or not a PyTorch checkpoint.{hint}") from None
  sd = _unwrap(obj, key, path)
  out = {}
  for k, v in sd.items():
    if not hasattr(v, "detach"):
      raise ConversionError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor.")
    v = v.detach().cpu()
    out[k] = (v.float() if v.is_floating_point() else v).numpy()
  return out


def save_npz(state_dict: Mapping[str, np.ndarray], path: str) -> None:
  np.savez(path, **{k: np.asarray(v) for k, v in state_dict.items()})


def save_converted(directory: str, variables: Mapping, meta: Mapping[str, Any]) -> None:
  """A verified Orbax checkpoint (step 0) of the variables, with `meta` as JSON."""
  checkpoint_io.save(directory, 0, variables, {"format": FORMAT, **meta})


def load_converted(directory: str) -> tuple[dict, dict]:
  """(variables, meta) of a converted (or exported) checkpoint; checksums verified."""
  state, meta, _ = checkpoint_io.restore(directory)
  if meta.get("format") != FORMAT:
    raise ConversionError(f"{directory}: not a bossnas_jax converted checkpoint "
                          f"(format {meta.get('format')!r}).")
  return state, meta


def load_bossnet(directory: str):
  """(BossNet module, variables) of a converted BossNet checkpoint."""
  from bossnas_jax.models.bossnet import BossNet

  variables, meta = load_converted(directory)
  if meta.get("kind") != "bossnet":
    raise ConversionError(f"{directory} holds a {meta.get('kind')!r}, not a BossNet.")
  return BossNet(bs.BossNetConfig.from_dict(meta["config"])), variables


def convert_file(path: str, out_dir: str, model: str, *, key: str | None = None,
                 allow_pickle: bool = False, dim_head: int = 64,
                 **config) -> ConversionReport:
  """Reads `path`, imports it as `model` ('supernet', a BossNet name / architecture) and saves a
  verified Orbax checkpoint in `out_dir`. Raises ConversionError with the full report on any
  unmatched, missing or mis-shaped key (nothing is written then)."""
  sd = load_state_dict(path, key=key, allow_pickle=allow_pickle)
  meta: dict[str, Any] = {"source": os.path.abspath(path)}
  if model == SUPERNET:
    sizes = infer_supernet_sizes(sd, dim_head)
    variables, report = import_supernet(sd, sizes, strict=False)
    meta.update(kind=SUPERNET, sizes=sizes.to_dict())
  else:
    if "num_classes" not in config and "fc.weight" in sd:
      config["num_classes"] = int(np.shape(sd["fc.weight"])[0])
    if "width_multiplier" not in config and "conv1.weight" in sd:
      config["width_multiplier"] = np.shape(sd["conv1.weight"])[0] / bs.BASE_STEM_CHANNELS
    cfg = bs.resolve_config(model, dim_head=dim_head, **config)
    variables, report = import_bossnet(sd, cfg, strict=False)
    meta.update(kind="bossnet", config=cfg.to_dict())
  report.raise_if_errors()
  meta["report"] = report.to_dict()
  save_converted(out_dir, variables, meta)
  return report


def export_checkpoint(ckpt_dir: str, out_path: str) -> int:
  """Converted (or native) checkpoint -> an .npz of official state_dict keys. Returns the number
  of arrays written."""
  variables, meta = load_converted(ckpt_dir)
  if meta.get("kind") == "bossnet":
    sd = export_bossnet(variables, bs.BossNetConfig.from_dict(meta["config"]))
  else:
    sd = export_supernet(variables, SupernetSizes.from_dict(meta["sizes"]))
  save_npz(sd, out_path)
  return len(sd)


# ------------------------------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m bossnas_jax.convert", description=__doc__.split(
      "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  imp = sub.add_parser("import", help="official state_dict (.pth / .npz) -> Orbax checkpoint")
  imp.add_argument("input")
  imp.add_argument("output", help="directory of the Orbax checkpoint to write")
  imp.add_argument("--model", required=True,
                   help="bossnet_t0 | bossnet_t0_nose | bossnet_t1 | an architecture such as "
                        "5433-3230-0010-0000 | supernet")
  imp.add_argument("--act", choices=bs.ACTIVATIONS, help="override the activation")
  imp.add_argument("--se", choices=("yes", "no"), help="override squeeze-excite")
  imp.add_argument("--last-stride", type=int, choices=(1, 2))
  imp.add_argument("--num-classes", type=int, help="default: from fc.weight")
  imp.add_argument("--dim-head", type=int, default=64)
  imp.add_argument("--key", help="entry of the checkpoint holding the state_dict "
                                 "(default: state_dict / model)")
  imp.add_argument("--allow-pickle", action="store_true",
                   help="torch.load without weights_only (trusted files only)")
  exp = sub.add_parser("export", help="converted checkpoint -> .npz of official keys")
  exp.add_argument("checkpoint")
  exp.add_argument("output", help=".npz path")
  return p


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.command == "export":
      n = export_checkpoint(args.checkpoint, args.output)
      print(f"wrote {n} arrays to {args.output}")
      return 0
    config: dict[str, Any] = {}
    if args.act:
      config["act"] = args.act
    if args.se:
      config["se"] = args.se == "yes"
    if args.last_stride:
      config["last_stride"] = args.last_stride
    if args.num_classes:
      config["num_classes"] = args.num_classes
    report = convert_file(args.input, args.output, args.model, key=args.key,
                          allow_pickle=args.allow_pickle, dim_head=args.dim_head, **config)
  except errors.UserError as e:  # Ours name the file and the fix: no traceback.
    print(f"python -m bossnas_jax.convert: error: {e}", file=sys.stderr)
    return 2
  print(report.summary())
  if args.se == "no" and not args.act and args.model != SUPERNET:
    print("note: --se no kept the activation of --model; the official networks without SE "
          "(T0-nose) use ReLU: convert with --act relu if this checkpoint does.")
  print(f"saved {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
