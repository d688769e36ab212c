"""Ensemble bootstrapping for one block (docs/method.md#training-iteration, #d2, #d3, #d7), as
compiled pure functions.

One micro-batch of block b, with 4 distinct candidates P_0..P_3 drawn for it:
  1. `features`: device augmentation of the 8 views, then the frozen prefix (blocks 0..b-1 along
     their chosen paths, inference-mode BN, target weights; docs/method.md#d3) once per view.
  2. target pass, per path j: target block + projector on views (j, 4 + j) with shuffle-BN (the
     batch permuted across all devices before the pass, un-permuted after); L2-normalised
     projections z_j.
  3. ensemble targets t1 = mean_j z_j(view j), t2 = mean_j z_j(view 4 + j) (docs/method.md#d7:
     not renormalised).
  4. online pass, per path j: loss L(q(o(view j)), t2) + L(q(o(view 4 + j)), t1); its gradient with
     respect to the path's parameters, the projector and the predictor, averaged over devices and
     added to the accumulator (the 4 paths are summed, each divided by `accumulate_steps`).
  5. every `accumulate_steps` micro-batches: LARS on the online side, then the EMA of the target
     (current block and projector only).

Compilation. A path is run layer by layer: each layer (a `supernet.Unit`) and each head is its own
compiled program, cached by its configuration (op, entry, input width), so the whole search space
needs a few dozen programs, shared by every path and every block, instead of one per path (436
paths, tens of seconds each on a CPU). A layer's forward keeps what its backward needs
(`unit_vjp`: the residuals of `jax.vjp`, split over devices), so no forward is recomputed. Every
program is `jax.jit(jax.shard_map(...))` over the 'data' mesh; BatchNorm runs in train mode with
per-device statistics and each view of a pair is normalised on its own. Running statistics
gathered while training are never used (ratings and prefixes recalibrate them exactly,
docs/method.md#d6), so no step keeps them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from bossnas_jax import search_space as ss
from bossnas_jax.infra import parallel
from bossnas_jax.infra.parallel import BATCH
from bossnas_jax.models import heads, siamese, supernet

Tree = Any


# ------------------------------------------------------------------------------------------------
# Initialisation.


@functools.partial(jax.jit, static_argnums=0)
def _init_heads(models: siamese.Models, key):
  proj, pred = models.projector, models.predictor
  pv = proj.init(key, proj.init_inputs(), train=True, method=heads.Projector.call_all)
  qv = pred.init(jax.random.fold_in(key, 1), jnp.zeros((1, models.proj_dim)), train=True)
  return pv["params"], qv["params"]


def init_state(models: siamese.Models, key, optimizer) -> siamese.BlockState:
  """Online = a fresh block and heads; target = a copy of the online block and projector."""
  block = supernet.init_block(models.dims, models.block, key)["params"]
  proj, pred = _init_heads(models, jax.random.fold_in(key, 7))
  online = {"block": block, "proj": proj, "pred": pred}
  target = jax.tree.map(jnp.copy, {"block": block, "proj": proj})
  return siamese.BlockState(step=jnp.zeros((), jnp.int32), online=online, target=target,
                    opt=optimizer.init(online))


# ------------------------------------------------------------------------------------------------
# Compiled programs, one per layer/head configuration.


def _local_grad_mean(grads):
  """The mean over devices of per-device gradients.

  Gradients of replicated parameters taken inside shard_map come back already summed over the
  mesh (the transpose of broadcasting an invariant value to every device is a psum); the average
  over devices, DDP's convention, is that sum divided by the device count.
  """
  n = jax.lax.axis_size(parallel.AXIS)
  return jax.tree.map(lambda g: g / n, grads)


def _program_unit(unit: supernet.Unit) -> supernet.Unit:
  """The key a unit's programs are compiled under: its layer index only names parameters, so the
  same op with the same entry and input width shares its programs across layers."""
  return dataclasses.replace(unit, layer=0)


def _named(fn, name: str):
  """Gives a program's function a name: XLA modules, dumps and profiles are then named after the
  unit or head they run instead of all being `jit_per_device`."""
  fn.__name__ = fn.__qualname__ = name
  return fn


def _unit_name(unit: supernet.Unit) -> str:
  entry = "stem" if unit.stem else "down" if unit.down else "same"
  return f"op{unit.op}_{entry}_in{unit.in_channels}"


def _apply_pair(dims: ss.Dims, dtype, unit: supernet.Unit):
  """(unit params, x pair) -> y pair, train-mode BN per view group."""
  def apply(params, pair):
    return siamese.per_view(lambda x: supernet.unit_apply(dims, unit, params, x, train=True,
                                                          dtype=dtype)[0], pair)
  return apply


@functools.cache
def unit_forward(dims: ss.Dims, dtype, mesh, unit: supernet.Unit):
  """(unit params, x pair) -> y pair, train-mode BN."""
  return _unit_forward(dims, dtype, mesh, _program_unit(unit))


@functools.cache
def _unit_forward(dims: ss.Dims, dtype, mesh, unit: supernet.Unit):
  fn = _named(_apply_pair(dims, dtype, unit), f"unit_forward_{_unit_name(unit)}")
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(), BATCH), out_specs=BATCH))


@functools.cache
def unit_vjp(dims: ss.Dims, dtype, mesh, unit: supernet.Unit, scale: float, need_dx: bool):
  """A unit's forward that keeps what its backward needs, and that backward:

    forward: (params, x pair) -> (y pair, residuals)
    backward: (params, acc, residuals, dy pair) -> (acc + scale * mean-over-devices grad,
                                                    dx pair or None)

  The same arithmetic as `unit_forward` followed by the backward, without recomputing the
  forward. Residuals are the leaves of `jax.vjp`'s pullback, each with a leading device axis so
  they stay split over 'data'; those that are the parameters themselves are not returned but
  taken from the backward's `params`.
  """
  return _unit_vjp(dims, dtype, mesh, _program_unit(unit), scale, need_dx)


@functools.cache
def _unit_vjp(dims: ss.Dims, dtype, mesh, unit: supernet.Unit, scale: float, need_dx: bool):
  apply = _apply_pair(dims, dtype, unit)
  layouts = {}  # Residual avals -> (pullback treedef, where each pullback leaf comes from).

  def forward(params, pair):
    if need_dx:
      y, pullback = jax.vjp(apply, params, pair)
    else:
      y, pullback = jax.vjp(lambda p: apply(p, pair), params)
    leaves, tree = jax.tree.flatten(pullback)
    param_index = {id(leaf): k for k, leaf in enumerate(jax.tree.leaves(params))}
    where, kept = [], []
    for leaf in leaves:
      if id(leaf) in param_index:
        where.append((True, param_index[id(leaf)]))
      else:
        where.append((False, len(kept)))
        kept.append(jnp.asarray(leaf)[None])
    layouts[_avals(kept)] = (tree, tuple(where))
    return y, kept

  def backward(params, acc, kept, dy):
    tree, where = layouts[_avals(kept)]
    param_leaves = jax.tree.leaves(params)
    leaves = [param_leaves[k] if is_param else kept[k][0] for is_param, k in where]
    grads = jax.tree.unflatten(tree, leaves)(dy)
    (dp, dx) = grads if need_dx else (grads[0], None)
    dp = _local_grad_mean(dp)
    return jax.tree.map(lambda a, g: a + scale * g, acc, dp), dx

  name = _unit_name(unit)
  fwd = jax.jit(jax.shard_map(_named(forward, f"online_forward_{name}"), mesh=mesh,
                              in_specs=(P(), BATCH), out_specs=(BATCH, BATCH)))
  bwd = jax.shard_map(_named(backward, f"online_backward_{name}"), mesh=mesh,
                      in_specs=(P(), P(), BATCH, BATCH),
                      out_specs=(P(), BATCH if need_dx else None))
  return fwd, jax.jit(bwd, donate_argnums=1)


def _avals(leaves) -> tuple:
  """Hashable shapes and dtypes of arrays (per device: the leading device axis is dropped)."""
  return tuple((tuple(x.shape[1:]), jnp.dtype(x.dtype).name) for x in leaves)


@functools.cache
def target_head(models: siamese.Models, mesh, scale: int):
  """(projector params, y pair) -> L2-normalised projections (B, 2, proj_dim)."""
  proj = models.projector

  def per_device(params, pair):
    def f(y):
      z, _ = proj.apply({"params": params["proj"]}, y, train=True, mutable=["batch_stats"])
      return heads.normalize(z)
    return siamese.per_view(f, pair)

  return jax.jit(jax.shard_map(_named(per_device, f"target_head_scale{scale}"), mesh=mesh,
                               in_specs=(P(), BATCH), out_specs=BATCH))


@functools.cache
def online_head(models: siamese.Models, mesh, scale: int, acc_scale: float):
  """(head params, acc, y pair, targets) -> (acc, dy pair, loss): the symmetric loss
  L(q(o(y1)), t2) + L(q(o(y2)), t1), its gradients, the loss averaged over devices."""
  proj, pred = models.projector, models.predictor

  def loss_fn(params, pair, targets):
    def q(y):
      z, _ = proj.apply({"params": params["proj"]}, y, train=True, mutable=["batch_stats"])
      p, _ = pred.apply({"params": params["pred"]}, z, train=True, mutable=["batch_stats"])
      return p
    return (heads.regression_loss(q(pair[:, 0]), targets[:, 1])
            + heads.regression_loss(q(pair[:, 1]), targets[:, 0]))

  def per_device(params, acc, pair, targets):
    loss, (dp, dy) = jax.value_and_grad(loss_fn, argnums=(0, 1))(params, pair, targets)
    dp = _local_grad_mean(dp)
    acc = jax.tree.map(lambda a, g: a + acc_scale * g, acc, dp)
    return acc, dy, jax.lax.pmean(loss, parallel.AXIS)

  fn = jax.shard_map(_named(per_device, f"online_head_scale{scale}"), mesh=mesh,
                     in_specs=(P(), P(), BATCH, BATCH), out_specs=(P(), BATCH, P()))
  return jax.jit(fn, donate_argnums=1)


def shuffle_permutations(key, n: int) -> jax.Array:
  """Shuffle-BN's permutations of a global batch of n, one per view of a pair: (2, n)."""
  return jnp.stack([jax.random.permutation(jax.random.fold_in(key, v), n) for v in (0, 1)])


@functools.cache
def _shuffle_programs(mesh):
  """Shuffle-BN: each view group of a pair permuted over the whole global batch, and back."""
  sharding = parallel.batch_sharded(mesh)

  def shuffle(pair, key):
    p = shuffle_permutations(key, pair.shape[0])
    out = jnp.stack([pair[p[v], v] for v in (0, 1)], axis=1)
    return jax.lax.with_sharding_constraint(out, sharding)

  def unshuffle(pair, key):
    inv = jnp.argsort(shuffle_permutations(key, pair.shape[0]), axis=1)
    out = jnp.stack([pair[inv[v], v] for v in (0, 1)], axis=1)
    return jax.lax.with_sharding_constraint(out, sharding)

  return jax.jit(shuffle), jax.jit(unshuffle)


@functools.cache
def _pair_program(mesh):
  sharding = parallel.batch_sharded(mesh)

  def take(feats, j):
    half = feats.shape[1] // 2
    out = jnp.stack([feats[:, j], feats[:, half + j]], axis=1)
    return jax.lax.with_sharding_constraint(out, sharding)

  return jax.jit(take)


# ------------------------------------------------------------------------------------------------
# One block's training: the prefix, micro-batches and the optimizer step.


@dataclasses.dataclass(frozen=True)
class PrefixBlock:
  """A frozen earlier block: its path, input scale and variables (target weights with
  recalibrated BN statistics), applied in inference mode."""

  block: int
  in_scale: int
  path: ss.Path


class BlockTrainer:
  """The compiled pieces of one block's training on a mesh."""

  def __init__(self, models: siamese.Models, mesh, *, accumulate_steps: int, augment: Callable,
               optimizer, prefix: Sequence[PrefixBlock] = ()):
    self.models = models
    self.mesh = mesh
    self.acc_scale = 1.0 / accumulate_steps
    self.augment = augment  # (key, uint8 views (B, V, H, W, 3)) -> normalised float views.
    self.optimizer = optimizer
    self.prefix = tuple(prefix)
    self._features = self._build_features()
    self._update = self._build_update()
    self._zeros = {}

  @property
  def in_scale(self) -> int:
    return ss.output_scale(self.prefix[-1].path) if self.prefix else ss.STEM_SCALE

  def _build_features(self):
    models, prefix = self.models, self.prefix

    def per_device(prefix_vars, views, key):
      key = jax.random.fold_in(key, jax.lax.axis_index(parallel.AXIS))
      x = self.augment(key, views).astype(models.dtype)
      b, v = x.shape[:2]
      x = x.reshape((b * v,) + x.shape[2:])
      # Inference-mode BN (recalibrated statistics), so all views can share one batch.
      for pb, variables in zip(prefix, prefix_vars):
        module = supernet.SupernetBlock(models.dims, pb.block, models.dtype)
        x = module.apply(variables, x, path=pb.path, in_scale=pb.in_scale, train=False)
      return x.reshape((b, v) + x.shape[1:])

    return jax.jit(jax.shard_map(_named(per_device, "features"), mesh=self.mesh,
                                 in_specs=(P(), BATCH, P()), out_specs=BATCH))

  def _build_update(self):
    optimizer = self.optimizer

    def fn(state: siamese.BlockState, acc, lr, ema):
      updates, opt = optimizer.update(acc, state.opt, state.online, learning_rate=lr)
      online = jax.tree.map(lambda w, u: w + u, state.online, updates)
      # EMA after the optimizer step, over the current block and projector only.
      target = jax.tree.map(lambda t, o: ema * t + (1 - ema) * o, state.target,
                            {"block": online["block"], "proj": online["proj"]})
      return siamese.BlockState(step=state.step + 1, online=online, target=target, opt=opt)

    # The new state is written over the old one. The zeroed accumulator is made by a program of
    # its own once the old one is freed: returned from this program, XLA:CPU keeps a copy of the
    # whole accumulator in temporary memory (0.85 GB more peak memory in block 0 at full size).
    return jax.jit(fn, donate_argnums=0)

  def _zeros_like(self, acc):
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), acc)
    shardings = jax.tree.map(lambda a: a.sharding, acc)
    key = (jax.tree.structure(acc), tuple(jax.tree.leaves(abstract)),
           tuple(jax.tree.leaves(shardings)))
    if key not in self._zeros:
      self._zeros[key] = jax.jit(
          lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract),
          out_shardings=shardings)
    return self._zeros[key]

  # -- pieces of a micro-batch ----------------------------------------------------------------
  def features(self, prefix_vars, views, key):
    """Augmented views through the frozen prefix: (B, 8, h, w, c) split over devices."""
    return self._features(prefix_vars, views, key)

  def target(self, state: siamese.BlockState, in_scale: int, path: ss.Path, pair, key):
    """Normalised target projections (B, 2, D) of a view pair, with shuffle-BN."""
    m, dims, dtype = self.models, self.models.dims, self.models.dtype
    shuffle, unshuffle = _shuffle_programs(self.mesh)
    x = shuffle(pair, key)
    for u in m.units(in_scale, path):
      x = unit_forward(dims, dtype, self.mesh, u)(
          supernet.unit_params(state.target["block"], dims, u), x)
    d = ss.output_scale(path)
    z = target_head(m, self.mesh, d)(siamese.head_params(m, state.target, d), x)
    return unshuffle(z, key)

  def online(self, state: siamese.BlockState, acc: Tree, in_scale: int, path: ss.Path, pair,
             targets):
    """Adds the path's gradient to `acc`; returns (acc, the path's symmetric loss)."""
    m, dims, dtype = self.models, self.models.dims, self.models.dtype
    units = m.units(in_scale, path)
    params = [supernet.unit_params(state.online["block"], dims, u) for u in units]
    programs = [unit_vjp(dims, dtype, self.mesh, u, self.acc_scale, need_dx=i > 0)
                for i, u in enumerate(units)]
    # Only this path's activations are alive: each unit's residuals, freed by its backward.
    x, saved = pair, []
    for (forward, _), p in zip(programs, params):
      x, res = forward(p, x)
      saved.append(res)
    d = ss.output_scale(path)
    acc_heads, dy, loss = online_head(m, self.mesh, d, self.acc_scale)(
        siamese.head_params(m, state.online, d), siamese.head_params(m, acc, d), x, targets)
    del x
    acc = siamese.set_head_params(acc, acc_heads)
    block_acc = acc["block"]
    for i in reversed(range(len(units))):
      u, backward = units[i], programs[i][1]
      sub, dy = backward(params[i], supernet.unit_params(block_acc, dims, u), saved.pop(), dy)
      block_acc = supernet.set_unit_params(block_acc, u, sub)
    return {**acc, "block": block_acc}, loss

  def micro_step(self, state: siamese.BlockState, acc: Tree, prefix_vars, views, key,
                 candidates: Sequence[tuple[int, ss.Path]]):
    """One micro-batch of candidates that all take input at this trainer's scale."""
    return micro_step({self.in_scale: self}, state, acc, {self.in_scale: prefix_vars}, views,
                      key, candidates)

  def update(self, state: siamese.BlockState, acc: Tree, lr: float, ema: float):
    """LARS step, then EMA; returns the new state and a zeroed accumulator. Consumes `state` and
    `acc` (their arrays are deleted)."""
    zeros = self._zeros_like(acc)
    state = jax.block_until_ready(self._update(state, acc, jnp.float32(lr), jnp.float32(ema)))
    for a in jax.tree.leaves(acc):
      a.delete()
    return state, zeros()


def micro_step(trainers: dict[int, BlockTrainer], state: siamese.BlockState, acc: Tree, prefix_vars,
               views, key, candidates: Sequence[tuple[int, ss.Path]]):
  """One micro-batch over candidates that may take input at different scales
  (docs/method.md#search-and-export).

  `trainers` and `prefix_vars` are keyed by input scale: the views go through each needed frozen
  prefix once; then targets with shuffle-BN, the ensemble, and the online passes of all paths.
  """
  trainer = next(iter(trainers.values()))
  feats = {s: trainers[s].features(prefix_vars[s], views, jax.random.fold_in(key, 0))
           for s in sorted({s for s, _ in candidates})}
  take = _pair_program(trainer.mesh)
  pairs = [take(feats[s], j) for j, (s, _) in enumerate(candidates)]
  zs = [trainer.target(state, s, p, pair, jax.random.fold_in(key, 1 + j))
        for j, ((s, p), pair) in enumerate(zip(candidates, pairs))]
  targets = sum(zs[1:], zs[0]) / len(zs)  # Mean of normalised projections (docs/method.md#d7).
  losses = []
  for (s, p), pair in zip(candidates, pairs):
    acc, loss = trainer.online(state, acc, s, p, pair, targets)
    losses.append(loss)
  return acc, losses


def sample_paths(candidates: Sequence, num_paths: int, seed: int, block: int, micro: int):
  """`num_paths` distinct candidates for micro-batch `micro` of `block`: the same on every host,
  reproducible from the run seed (docs/method.md#d8)."""
  rng = np.random.default_rng([seed, block, micro])
  return [candidates[i] for i in rng.choice(len(candidates), num_paths, replace=False)]
