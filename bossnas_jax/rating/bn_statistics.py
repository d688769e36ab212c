"""Exact BatchNorm statistics over a calibration set (docs/method.md#d6).

The official rating sets BN momentum to 1, so each BN keeps the statistics of one batch of one
view, and never calibrates the predictor. Here every BN of a path (and of the heads, for ratings)
gets the exact mean and variance of its input over the whole calibration set, both views, all
devices: the forward runs in train mode (each BN normalises with its batch statistics, as in
training), an interceptor records each BN input's count, mean and centred sum of squares per
device, and these are merged in float64 with Chan's parallel formula. The variance is stored
unbiased, as PyTorch's running_var is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from bossnas_jax.infra import parallel
from bossnas_jax.infra.parallel import BATCH
from bossnas_jax.models import supernet

MOMENTS = "bn_moments"


def _record_bn_inputs(next_fun, args, kwargs, context):
  """Interceptor: every BatchNorm call sows (count, mean, centred sum of squares) of its input."""
  module = context.module
  if isinstance(module, nn.BatchNorm) and context.method_name == "__call__":
    x = args[0].astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    m2 = jnp.sum(jnp.square(x - mean), axes)
    count = jnp.full(mean.shape, np.prod([x.shape[a] for a in axes]), jnp.float32)
    # Stacked per call: a BN that runs twice in one apply keeps both sets.
    module.sow(MOMENTS, "moments", jnp.stack([count, mean, m2])[None],
               init_fn=lambda: jnp.zeros((0, 3) + mean.shape, jnp.float32),
               reduce_fn=lambda acc, v: jnp.concatenate([acc, v]))
  return next_fun(*args, **kwargs)


def with_bn_moments(apply: Callable) -> Callable:
  """Wraps `apply(...) -> y` into `(...) -> (y, moments)`, moments nested like batch_stats with
  leaves of shape (calls, 3, C). `apply` must run Flax modules in train mode and pass
  `mutable=[..., MOMENTS]` through `**kwargs`; see `moments_program`."""

  def fn(*args, **kwargs):
    with nn.intercept_methods(_record_bn_inputs):
      return apply(*args, **kwargs)

  return fn


def merge(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
  """Chan's merge of two (3, C) [count, mean, M2] moment arrays (float64)."""
  b = np.asarray(b, np.float64)
  if a is None:
    return b
  na, ma, sa = a
  nb, mb, sb = b
  n = na + nb
  delta = mb - ma
  mean = ma + delta * nb / n
  m2 = sa + sb + delta**2 * na * nb / n
  return np.stack([n, mean, m2])


def merge_tree(acc, new):
  """Merges a tree of per-device moment arrays (devices, calls, 3, C) into `acc` (3, C) leaves."""
  def leaf(a, b):
    b = np.asarray(b, np.float64).reshape((-1,) + b.shape[-2:])
    for row in b:
      a = merge(a, row)
    return a

  if acc is None:
    return jax.tree.map(lambda b: leaf(None, b), new)
  return jax.tree.map(leaf, acc, new)


def to_batch_stats(moments) -> dict:
  """{'.../moments': (3, C)} -> {'...': {'mean', 'var'}} with unbiased variance, float32."""
  if isinstance(moments, dict):
    if set(moments) == {"moments"}:
      n, mean, m2 = moments["moments"]
      return {"mean": jnp.asarray(mean, jnp.float32),
              "var": jnp.asarray(m2 / np.maximum(n - 1, 1), jnp.float32)}
    return {k: to_batch_stats(v) for k, v in moments.items()}
  raise TypeError(f"unexpected moments node {type(moments)}")


@functools.cache
def moments_program(apply: Callable, mesh):
  """jit(shard_map) of `apply(params, x) -> (y, moments)`: y stays split over devices, moments
  come back stacked per device (leading axis = device) and replicated, so that every host reads
  all of them (they are merged on the host in float64)."""
  n = mesh.shape[parallel.AXIS]

  def gather(m):
    # Each device writes its row and the rows are summed: an exact gather (x + 0 = x) whose
    # result shard_map knows to be the same on every device.
    rows = jnp.zeros((n,) + m.shape, m.dtype).at[jax.lax.axis_index(parallel.AXIS)].set(m)
    return jax.lax.psum(rows, parallel.AXIS)

  def per_device(params, x):
    y, moments = apply(params, x)
    return y, jax.tree.map(gather, moments)

  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), BATCH),
                               out_specs=(BATCH, P())))


@functools.cache
def _unit_moments_apply(dims, dtype, unit):
  def apply(params, x):
    y, mutated = supernet.unit_apply(dims, unit, params, x, train=True, dtype=dtype,
                                     collections=("batch_stats", MOMENTS))
    return y, {k: v[MOMENTS] for k, v in mutated.items()}

  return with_bn_moments(apply)


def calibrate_units(dims, dtype, mesh, units, params, pairs, outputs: list | None = None) -> dict:
  """Exact BN statistics of a chain of units over calibration feature pairs.

  `params` are the units' parameters (`supernet.unit_params`), `pairs` an iterable of (B, 2, ...)
  inputs of the first unit (both views count). Returns batch_stats in the block's naming, ready to
  merge into `{'params': ..., 'batch_stats': ...}` of `supernet.SupernetBlock`. If `outputs` is a
  list, the chain's train-mode output pairs are appended to it (the inputs of the heads).
  """
  acc = [None] * len(units)
  for pair in pairs:
    views = []
    for v in range(pair.shape[1]):
      x = pair[:, v]
      for i, (u, p) in enumerate(zip(units, params)):
        x, moments = moments_program(_unit_moments_apply(dims, dtype, u), mesh)(p, x)
        acc[i] = merge_tree(acc[i], jax.device_get(moments))
      views.append(x)
    if outputs is not None:
      outputs.append(jnp.stack(views, axis=1))
  out = {}
  for u, moments in zip(units, acc):
    for k, name in supernet.unit_param_names(u).items():
      out[name] = to_batch_stats(moments[k])
  return out
