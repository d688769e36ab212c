"""The networks of one block's Siamese pair, as pytrees and static descriptions shared by block
training and rating (docs/method.md#training-iteration): `Models` describes a block's supernet
layers and heads; `BlockState` holds its online and target weights; `head_params` picks the
projector weights used at one output scale.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp

from bossnas_jax import search_space as ss
from bossnas_jax.models import heads, supernet

Tree = Any


def per_view(f, pair):
  """f over each view of a (B, 2, ...) pair. Mapped over the view axis, so BN statistics are per
  view group while XLA runs both views through each convolution as one batch."""
  return jax.vmap(f, in_axes=1, out_axes=1)(pair)


@flax.struct.dataclass
class BlockState:
  """Everything block training changes. online = {'block', 'proj', 'pred'}; target = {'block',
  'proj'}. The frozen prefix travels separately, read-only."""

  step: jax.Array  # Optimizer steps taken in this block.
  online: Tree
  target: Tree
  opt: Tree  # The optimizer's state (train/lars.py).


@dataclasses.dataclass(frozen=True)
class Models:
  """The static description of one block's networks."""

  dims: ss.Dims
  block: int
  neck_hidden: int
  proj_dim: int
  pred_hidden: int
  dtype: Any = jnp.float32

  @property
  def projector(self) -> heads.Projector:
    return heads.Projector(self.dims, self.neck_hidden, self.proj_dim, self.dtype)

  @property
  def predictor(self) -> heads.Predictor:
    return heads.Predictor(self.pred_hidden, self.proj_dim, self.dtype)

  def units(self, in_scale: int, path: ss.Path) -> tuple[supernet.Unit, ...]:
    return supernet.path_units(self.dims, self.block, in_scale, path)


@functools.cache
def _proj_structure(proj: heads.Projector, scale: int):
  d = proj.dims
  x = jax.ShapeDtypeStruct((1, d.fmap(scale), d.fmap(scale), d.channels(scale)), jnp.float32)
  return jax.eval_shape(functools.partial(proj.init, train=True), jax.random.key(0), x)["params"]


def head_params(models: Models, tree: Tree, scale: int) -> Tree:
  """The projector's parameters used at output `scale` (and the predictor, if `tree` has one)."""
  out = {"proj": supernet._select(tree["proj"], _proj_structure(models.projector, scale))}
  if "pred" in tree:
    out["pred"] = tree["pred"]
  return out


def set_head_params(tree: Tree, sub: Tree) -> Tree:
  out = dict(tree)
  for k, v in sub.items():
    out[k] = supernet._merge(tree[k], v)
  return out
