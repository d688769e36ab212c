"""The HyTra supernet, one block at a time (docs/method.md#search-space).

A block's variables are a flat dict of modules named `layer{i}_op{o}` (candidate op o of layer i),
plus, in block 0, the stem and the patchify adapters `adapter{d}` from the stem to scale d. The
forward of one block along one path creates only that path's modules, so

    SupernetBlock(...).apply(path_variables(vars, ...), x, path=..., in_scale=..., train=...)

runs with the path's sub-tree alone, and a gradient taken with respect to that sub-tree touches
nothing else. No weights are shared between candidates (docs/method.md#op-index).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bossnas_jax import search_space as ss
from bossnas_jax.models.layers import Dtype, batch_norm, conv, conv1x1, max_pool, patchify
from bossnas_jax.models.ops import ResAtt, ResConv

Variables = dict[str, Any]


def op_name(layer: int, op: int) -> str:
  return f"layer{layer}_op{op}"


def make_op(dims: ss.Dims, op: int, name: str, dtype: Dtype = jnp.float32) -> nn.Module:
  d = ss.op_scale(op)
  if ss.is_attention(op):
    return ResAtt(dims.channels(d), dims.heads(d), dims.dim_head, dtype, name=name)
  return ResConv(dims.channels(d), dtype, name=name)


class StemAdapter(nn.Module):
  """Block 0, layer 0: stem (scale 3) -> scale d: depthwise k=s/s conv, 1x1 conv, BN, no act."""

  dims: ss.Dims
  scale: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = patchify(x.shape[-1], ss.stride_from_stem(self.scale), "dw", self.dtype)(x)
    x = conv1x1(self.dims.width(self.scale), "proj", self.dtype)(x)
    return batch_norm(train, "bn", dtype=self.dtype)(x)


class Stem(nn.Module):
  """conv 7x7/s2/p3 -> BN -> ReLU -> maxpool 3x3/s2/p1: an image to scale 3 (56x56 at 224)."""

  dims: ss.Dims
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = conv(self.dims.stem_channels, 7, 2, 3, "conv", self.dtype)(x)
    x = nn.relu(batch_norm(train, "bn", dtype=self.dtype)(x))
    return max_pool(x, 3, 2, 1)


@dataclasses.dataclass(frozen=True)
class Unit:
  """One layer of a path, as a self-contained piece: op `op` of layer `layer`, taking input with
  `in_channels` channels one scale finer (`down`) or at its own scale; the first unit of block 0
  also runs the stem and the adapter to the op's scale (`stem`)."""

  layer: int
  op: int
  down: bool
  in_channels: int
  stem: bool = False

  @property
  def scale(self) -> int:
    return ss.op_scale(self.op)


def path_units(dims: ss.Dims, block: int, in_scale: int, path: ss.Path) -> tuple[Unit, ...]:
  """The layers of `path` in `block` with input at `in_scale`: the one routing rule."""
  units, prev = [], in_scale
  for i, o in enumerate(path):
    d = ss.op_scale(o)
    if block == 0 and i == 0:
      # The adapter brings the stem to the op's own scale: the op sees same-scale input.
      units.append(Unit(i, o, False, dims.width(d), stem=True))
    else:
      units.append(Unit(i, o, d == prev - 1, dims.channels(prev)))
    prev = d
  return tuple(units)


class SupernetBlock(nn.Module):
  """Block `block` of the supernet, applied along one path (stem first in block 0)."""

  dims: ss.Dims
  block: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, path: ss.Path, in_scale: int, train: bool):
    for u in path_units(self.dims, self.block, in_scale, tuple(path)):
      if u.stem:
        x = Stem(self.dims, self.dtype, name="stem")(x, train)
        x = StemAdapter(self.dims, u.scale, self.dtype, name=f"adapter{u.scale}")(x, train)
      x = make_op(self.dims, u.op, op_name(u.layer, u.op), self.dtype)(
          x, down=u.down, train=train)
    return x


def unit_param_names(unit: Unit) -> dict[str, str]:
  """Names in a unit's own tree -> names in the block's tree."""
  names = {"op": op_name(unit.layer, unit.op)}
  if unit.stem:
    names.update(stem="stem", adapter=f"adapter{unit.scale}")
  return names


@functools.cache
def _entry_structure(dims: ss.Dims, unit: Unit):
  module = make_op(dims, unit.op, "op")
  d = unit.scale + unit.down
  x = jax.ShapeDtypeStruct((1, dims.fmap(d), dims.fmap(d), unit.in_channels), jnp.float32)
  return jax.eval_shape(functools.partial(module.init, down=unit.down, train=True),
                        jax.random.key(0), x)["params"]


def unit_params(block_params: dict, dims: ss.Dims, unit: Unit) -> dict:
  """A unit's parameters ({'op'} or {'stem', 'adapter', 'op'}), the op's used entry only."""
  out = {k: block_params[v] for k, v in unit_param_names(unit).items()}
  out["op"] = _select(out["op"], _entry_structure(dims, unit))
  return out


def set_unit_params(block_params: dict, unit: Unit, sub: dict) -> dict:
  """Writes a unit's (updated) parameters back into a copy of the block's tree."""
  out = dict(block_params)
  for k, v in unit_param_names(unit).items():
    out[v] = _merge(block_params[v], sub[k])
  return out


def unit_apply(dims: ss.Dims, unit: Unit, params: dict, x, *, train: bool,
               dtype: Dtype = jnp.float32, batch_stats: dict | None = None,
               collections: tuple[str, ...] = ("batch_stats",)):
  """Applies one unit -> (y, {module: mutated collections}).

  In train mode BN uses batch statistics and the running statistics are created fresh; any other
  `collections` a caller asks for (say, sown BN moments) come back beside them. In eval mode
  `batch_stats` (nested like `params`) is used and nothing is mutated.
  """
  modules = {"op": make_op(dims, unit.op, "op", dtype)}
  if unit.stem:
    modules = {"stem": Stem(dims, dtype), "adapter": StemAdapter(dims, unit.scale, dtype),
               **modules}
  mutated = {}
  for k, m in modules.items():
    kw = {"down": unit.down} if k == "op" else {}
    if train:
      x, mutated[k] = m.apply({"params": params[k]}, x, train=True, mutable=list(collections),
                              **kw)
    else:
      x = m.apply({"params": params[k], "batch_stats": batch_stats[k]}, x, train=False, **kw)
  return x, mutated


# ------------------------------------------------------------------------------------------------
# Initialisation of a whole block, and the sub-tree of one path.


def _zeros(dims: ss.Dims, d: int, channels: int) -> jax.Array:
  return jnp.zeros((1, dims.fmap(d), dims.fmap(d), channels), jnp.float32)


def _merge(a: dict, b: dict) -> dict:
  out = dict(a)
  for k, v in b.items():
    out[k] = _merge(out[k], v) if isinstance(v, dict) and k in out else v
  return out


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _init_op(dims: ss.Dims, op: int, in_channels: int, with_down: bool, key) -> Variables:
  """Both entries of one candidate op, with the same key so the shared trunk is one.

  Jitted per op configuration (not per layer), so a block's identical layers share one compile:
  XLA:CPU takes seconds to compile the random initialisers of a whole block at once.
  """
  d = ss.op_scale(op)
  module = make_op(dims, op, "op")
  v = module.init(key, _zeros(dims, d, in_channels), down=False, train=True)
  if with_down:
    v_d = module.init(key, _zeros(dims, d + 1, dims.channels(d + 1)), down=True, train=True)
    v = _merge(v, v_d)
  return v


@functools.partial(jax.jit, static_argnums=(0,))
def _init_stem_and_adapters(dims: ss.Dims, key) -> dict[str, Variables]:
  img = jnp.zeros((1, dims.resolution, dims.resolution, 3), jnp.float32)
  parts = {"stem": Stem(dims).init(jax.random.fold_in(key, 100), img, train=True)}
  x = _zeros(dims, ss.STEM_SCALE, dims.stem_channels)
  for d in range(ss.NUM_SCALES):
    k = jax.random.fold_in(key, 200 + d)
    parts[f"adapter{d}"] = StemAdapter(dims, d).init(k, x, train=True)
  return parts


def init_block(dims: ss.Dims, block: int, key) -> Variables:
  """Variables ({'params', 'batch_stats'}) of every candidate of a block (no dead branches)."""
  parts: dict[str, Variables] = {}
  if block == 0:
    parts.update(_init_stem_and_adapters(dims, key))
  for layer in range(ss.LAYERS_PER_BLOCK):
    for op in ss.ops_in_block(block):
      d = ss.op_scale(op)
      in_ch = dims.width(d) if block == 0 and layer == 0 else dims.channels(d)
      k = jax.random.fold_in(key, 10 * layer + op)
      parts[op_name(layer, op)] = _init_op(
          dims, op, in_ch, ss.has_down_branch(block, layer, d), k)
  return {col: {name: v[col] for name, v in parts.items() if col in v}
          for col in ("params", "batch_stats")}


@functools.cache
def _path_structure(dims: ss.Dims, block: int, in_scale: int, path: ss.Path):
  module = SupernetBlock(dims, block)
  d_in = ss.STEM_SCALE if block == 0 else in_scale
  x = (jnp.zeros((1, dims.resolution, dims.resolution, 3)) if block == 0 else
       _zeros(dims, d_in, dims.channels(d_in)))
  return jax.eval_shape(
      functools.partial(module.init, path=path, in_scale=in_scale, train=True),
      jax.random.key(0), x)


def _select(tree, structure):
  if not isinstance(structure, dict):
    return tree
  return {k: _select(tree[k], v) for k, v in structure.items()}


def path_variables(variables: Variables, dims: ss.Dims, block: int, in_scale: int,
                   path: ss.Path) -> Variables:
  """The sub-tree of a block's variables that `path` uses (same nesting, fewer leaves)."""
  structure = _path_structure(dims, block, in_scale, tuple(path))
  return {col: _select(variables[col], structure[col]) for col in structure if col in variables}


def block_input_shape(dims: ss.Dims, block: int, in_scale: int, batch: int) -> tuple[int, ...]:
  """Shape of a block's input: the image for block 0, else features at `in_scale`."""
  if block == 0:
    return (batch, dims.resolution, dims.resolution, 3)
  return (batch, dims.fmap(in_scale), dims.fmap(in_scale), dims.channels(in_scale))
