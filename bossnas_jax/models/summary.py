"""Prints the search space and the supernet's sizes, by jax.eval_shape (nothing is allocated).

    python -m bossnas_jax.models.summary --config configs/hytra.py        # the full-size figures
    python -m bossnas_jax.models.summary --config configs/hytra.py:demo
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections

from bossnas_jax import search_space as ss
from bossnas_jax.models import heads, supernet


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def dims_from_config(config: ml_collections.ConfigDict) -> ss.Dims:
  m = config.model
  return ss.Dims(float(m.width_multiplier), int(m.resolution), int(m.dim_head))


@functools.cache
def _param_shapes(fn, *args):
  return jax.eval_shape(lambda k: fn(*args, k), jax.random.key(0))["params"]


def block_params(dims: ss.Dims, block: int) -> int:
  """Parameters of every candidate of a block, as bossnas_jax builds it."""
  return _count(_param_shapes(supernet.init_block, dims, block))


def op_params(dims: ss.Dims, op: int, in_channels: int, with_down: bool) -> int:
  return _count(_param_shapes(supernet._init_op, dims, op, in_channels, with_down))


def unused_down_params(dims: ss.Dims) -> int:
  """The `*_d` branches of block 0, layer 0: the official code builds them but never runs them."""
  total = 0
  for op in ss.ops_in_block(0):
    d = ss.op_scale(op)
    if d < ss.BLOCK_DEPTHS[0] - 1:
      w = dims.width(d)
      total += op_params(dims, op, w, True) - op_params(dims, op, w, False)
  return total


def neck_params(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(projector, its fix_channels, predictor) parameters."""
  dims, m = dims_from_config(config), config.model
  proj = heads.Projector(dims, m.neck_hidden, m.proj_dim)
  p = jax.eval_shape(lambda k: proj.init(k, proj.init_inputs(), train=True,
                                         method=heads.Projector.call_all),
                     jax.random.key(0))["params"]
  fix = _count({k: v for k, v in p.items() if k.startswith("fix")})
  pred = heads.Predictor(m.pred_hidden, m.proj_dim)
  q = jax.eval_shape(lambda k: pred.init(k, jnp.zeros((1, m.proj_dim)), train=True),
                     jax.random.key(0))["params"]
  return _count(p), fix, _count(q)


def _m(n: int) -> str:
  if n >= 1e6:
    return f"{n / 1e6:.2f}M"
  return f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def space_lines() -> list[str]:
  lines = ["Path rules (docs/method.md#paths), paths per stage depth k:",
           f"  {'rule':<28}" + "".join(f"{f'k={k}':>6}" for k in (4, 3, 2, 1))]
  names = {"restricted": "restricted (restricted_path)", "step": "step (all_path)",
           "free": "free (all_path_)"}
  for rule in ss.RULES:
    lines.append(f"  {names[rule]:<28}" + "".join(
        f"{len(ss.enumerate_paths(k, rule)):>6}" for k in (4, 3, 2, 1)))
  lines.append("Candidates per (block, input scale), with D5 (docs/method.md#d5):")
  for b in range(ss.NUM_BLOCKS):
    per = ", ".join(f"input {ss.SCALE_NAMES[s]}x{ss.SCALE_NAMES[s]}: {len(ss.candidates(b, s))}"
                    for s in ss.input_scales(b))
    lines.append(f"  block {b}: {per}  (total {len(ss.all_candidates(b))})")
  return lines


def model_lines(config: ml_collections.ConfigDict) -> list[str]:
  dims = dims_from_config(config)
  lines = [f"Supernet at width x{dims.width_multiplier:g}, resolution {dims.resolution} "
           "(jax.eval_shape, nothing allocated):"]
  per_block = [block_params(dims, b) for b in range(ss.NUM_BLOCKS)]
  built, dead = sum(per_block), unused_down_params(dims)
  lines.append(f"  backbone parameters: {built + dead:,} (official module count) = {built:,} "
               f"built + {dead:,} in block 0 layer 0's never-run `_d` branches")
  lines.append("  per block (built): " + ", ".join(f"{b}: {n:,}" for b, n in enumerate(per_block)))
  lines.append("  per candidate op (a non-first layer of block 0/1, both entries):")
  for op in ss.OPS:
    d = op.scale
    n = op_params(dims, op.index, dims.channels(d), ss.has_down_branch(0, 1, d))
    lines.append(f"    {op.index} {op.name:<11} {n:>12,}  ({_m(n)})")
  proj, fix, pred = neck_params(config)
  lines.append(f"  projector neck: {proj:,} (fix_channels {fix:,}); predictor: {pred:,}")
  return lines


def print_summary(config: ml_collections.ConfigDict) -> None:
  print("\n".join(space_lines() + model_lines(config)), flush=True)


def main() -> None:
  """`python -m bossnas_jax.models.summary --config configs/hytra.py[:demo]`."""
  from ml_collections import config_flags

  from bossnas_jax.infra import cli

  config = config_flags.DEFINE_config_file("config", "configs/hytra.py", "Experiment config file.")
  cli.run(lambda argv: print_summary(config.value))


if __name__ == "__main__":
  main()
