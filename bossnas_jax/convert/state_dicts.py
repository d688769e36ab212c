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
The command line is `cli.py` (`python -m bossnas_jax.convert`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from collections import Counter
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bossnas_jax import search_space as ss
from bossnas_jax.convert import keys, layouts
from bossnas_jax.infra import errors
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.models import heads, supernet


class ConversionError(errors.UserError, ValueError):
  """A state_dict that cannot be read or does not match the model."""


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


def _check_table(table: keys.Table, expected: Mapping, what: str) -> dict[tuple, tuple[int, ...]]:
  """The table must cover the Flax tree exactly; a mismatch is a bug in this module."""
  exp = {k: tuple(v.shape) for k, v in _flat(expected).items()}
  got = {(*e.part, e.collection, *e.path) for e in table.entries}
  if set(exp) != got:
    extra = sorted("/".join(k) for k in got - set(exp))
    lack = sorted("/".join(k) for k in set(exp) - got)
    raise RuntimeError(f"convert/keys.py's {what} table is out of sync with the Flax model: "
                       f"table-only {extra[:10]}, Flax-only {lack[:10]}")
  return exp


def _import(state_dict: Mapping[str, np.ndarray], table: keys.Table, expected: Mapping,
            ignore, what: str) -> tuple[dict, ConversionReport]:
  exp = _check_table(table, expected, what)
  report = ConversionReport(what=what)
  by_key = {e.key: e for e in table.entries}
  out: dict = {}
  for key, value in state_dict.items():
    entry = by_key.get(key)
    if entry is None:
      reason = keys.NUM_BATCHES if key.endswith(".num_batches_tracked") else next(
          (r for pat, r in ignore if pat.search(key)), None)
      if reason is None:
        report.unmatched.append(f"{key} {tuple(np.shape(value))}")
      else:
        report.ignored[key] = reason
      continue
    flax_shape = exp[(*entry.part, entry.collection, *entry.path)]
    want = layouts.torch_shape(flax_shape, entry.layout)
    got = tuple(np.shape(value))
    if got != want:
      report.mis_shaped.append(f"{key}: shape {got}, expected {want}")
      continue
    arr = layouts.to_flax(np.asarray(value, np.float32), entry.layout)
    _set(out, (*entry.part, entry.collection, *entry.path), np.ascontiguousarray(arr))
    report.matched += 1
  for e in table.entries:
    if e.key not in state_dict:
      report.missing.append(f"{e.key} -> {'/'.join((*e.part, e.collection, *e.path))}")
  return out, report


def _export(variables: Mapping, table: keys.Table) -> dict[str, np.ndarray]:
  out = {}
  for e in table.entries:
    try:
      a = np.asarray(jax.device_get(_get(variables, (*e.part, e.collection, *e.path))))
    except KeyError:
      raise ConversionError(
          f"export: the variables lack {'/'.join((*e.part, e.collection, *e.path))} "
          f"(official key {e.key}).") from None
    out[e.key] = np.ascontiguousarray(layouts.to_torch(a.astype(np.float32), e.layout))
  for p in table.bn_prefixes:
    out[f"{p}.num_batches_tracked"] = np.zeros((), np.int64)
  return out


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
  variables, report = _import(state_dict, keys.bossnet_table(config), _bossnet_shapes(config), [],
                              f"BossNet {config.name or ss.format_stage_encoding(config.encoding)}"
                              f" (activation {config.act}, SE {'on' if config.se else 'off'}; "
                              "the checkpoint records both)")
  if strict:
    report.raise_if_errors()
  return variables, report


def bossnet_state_dict_shapes(model) -> dict[str, tuple[int, ...]]:
  """The official state_dict of a BossNet: key -> PyTorch shape (num_batches_tracked included)."""
  config = bs.resolve_config(model)
  table = keys.bossnet_table(config)
  exp = _check_table(table, _bossnet_shapes(config), "BossNet")
  out = {e.key: layouts.torch_shape(exp[(*e.part, e.collection, *e.path)], e.layout)
         for e in table.entries}
  out.update({f"{p}.num_batches_tracked": () for p in table.bn_prefixes})
  return out


def export_bossnet(variables: Mapping, model) -> dict[str, np.ndarray]:
  """Flax BossNet variables -> an official state_dict (numpy arrays, PyTorch layouts; BN
  num_batches_tracked set to 0), loadable with `load_state_dict(strict=True)`."""
  return _export(variables, keys.bossnet_table(bs.resolve_config(model)))


def supernet_shapes(sizes: keys.SupernetSizes) -> dict:
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
                         resolution: int = 224) -> keys.SupernetSizes:
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
  return keys.SupernetSizes(
      dims,
      np.shape(neck)[0] if neck is not None else 4096,
      np.shape(neck_out)[0] if neck_out is not None else 256,
      np.shape(pred)[0] if pred is not None else 4096)


def import_supernet(state_dict: Mapping[str, np.ndarray],
                    sizes: keys.SupernetSizes | None = None, *, dim_head: int = 64,
                    strict: bool = True) -> tuple[dict, ConversionReport]:
  """Official search checkpoint state_dict -> {'backbone': {'block{b}': vars}, 'necks': ...,
  'predictors': ..., and 'target_backbone' / 'target_necks' when the checkpoint has them}."""
  sizes = sizes or infer_supernet_sizes(state_dict, dim_head)
  table = keys.supernet_table(sizes, set(state_dict))
  parts = {e.part for e in table.entries}
  shapes = supernet_shapes(sizes)
  expected = {}
  for part in parts:
    _set(expected, part, _get(shapes, part))
  variables, report = _import(state_dict, table, expected, keys.SUPERNET_IGNORE,
                              f"HyTra supernet (width x{sizes.dims.width_multiplier})")
  if strict:
    report.raise_if_errors()
  return variables, report


def export_supernet(variables: Mapping, sizes: keys.SupernetSizes | None = None) -> dict:
  """Flax supernet tree (as import_supernet returns) -> official keys for the parts present.

  The never-run `*_d` modules of block 0 layer 0 and the alias prefixes are not written, so a
  PyTorch `SiameseSupernetsHyTra` needs `strict=False` to load the result."""
  table = keys.supernet_table(sizes or keys.SupernetSizes(), None)
  present = {e for e in table.entries if e.part[0] in variables}
  sub = keys.Table()
  sub.entries = [e for e in table.entries if e in present]
  sub.bn_prefixes = [p for p in table.bn_prefixes
                     if any(e.key.startswith(p + ".") for e in sub.entries)]
  return _export(variables, sub)


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
