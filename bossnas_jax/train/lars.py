"""LARS as OpenSelfSup implements it (docs/method.md#optimizer), with the exclusions of
docs/method.md#d1.

For each parameter tensor with a non-zero gradient:
    local_lr = 1                                   if the tensor is excluded,
               eta * |w| / (|g| + wd * |w|)        otherwise;
    d   = (g + wd * w) * local_lr * lr             (wd = 0 for excluded tensors)
    buf = momentum * buf + d                       (buf starts at 0, so its first value is d)
    w  <- w - buf
The learning rate sits inside the momentum buffer (unlike optax.lars). A tensor whose accumulated
gradient is exactly zero (a candidate not sampled in the accumulation window, an unused
`fix_channels` adapter) gets no update at all: no decay and no momentum step, as the official
optimizer hook does by dropping such gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def lars_exclusion_mask(params) -> object:
  """True for leaves exempt from LARS scaling and weight decay (docs/method.md#d1): every bias and
  every norm scale. In a Flax tree only conv/dense kernels are named 'kernel'; BatchNorm holds
  'scale' and 'bias', and convs/dense their 'bias'. The decision follows the leaf's name in the
  tree, so no BatchNorm escapes it the way the official regex over PyTorch names let 210 of 343
  escape."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key != "kernel", params)


class LarsState(NamedTuple):
  momentum: optax.Updates


def lars(momentum: float = 0.9, weight_decay: float = 1e-6, eta: float = 1e-3
         ) -> optax.GradientTransformationExtraArgs:
  """LARS whose `update(grads, state, params, *, learning_rate)` takes the step's learning rate."""

  def init(params):
    return LarsState(jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params=None, *, learning_rate):
    if params is None:
      raise ValueError("lars needs the parameters: call update(grads, state, params, ...).")
    excluded = lars_exclusion_mask(params)

    def leaf(g, buf, w, excl):
      active = jnp.any(g != 0)
      if excl:
        d = g * learning_rate
      else:
        w_norm = jnp.linalg.norm(w)
        local_lr = eta * w_norm / (jnp.linalg.norm(g) + weight_decay * w_norm)
        d = (g + weight_decay * w) * local_lr * learning_rate
      new_buf = jnp.where(active, momentum * buf + d, buf)
      return jnp.where(active, -new_buf, jnp.zeros_like(w)), new_buf

    out = jax.tree.map(leaf, grads, state.momentum, params, excluded)
    updates = jax.tree.map(lambda o: o[0], out, is_leaf=lambda x: isinstance(x, tuple))
    bufs = jax.tree.map(lambda o: o[1], out, is_leaf=lambda x: isinstance(x, tuple))
    return updates, LarsState(bufs)

  return optax.GradientTransformationExtraArgs(init, update)
