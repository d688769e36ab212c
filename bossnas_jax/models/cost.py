"""Analytic cost model: multiply-adds (MAdds) and parameters of the supernet and of BossNet.

This is the one place for cost formulas. A handful of primitives (convolution, dense / 1x1
convolution, batch norm, attention, squeeze-excite) are combined into residual blocks, which both
the supernet candidates and BossNet use, so every figure is built from the same arithmetic.

Two conventions:

* ``"true"`` (the default) counts what the network really computes: every convolution and dense
  layer, the attention products q·kᵀ and attn·v, squeeze-excite where it exists, projection
  shortcuts as built, at the feature-map sizes the network really has (PyTorch's floor/ceil rules
  for odd sizes). Parameters include batch-norm scales/biases and all biases, so they equal the
  Flax parameter count of the built model exactly (BN running statistics are not parameters).
  MAdds leave out batch norm, activations, softmax, pooling, the SE gate and bias additions.
* ``"official"`` reproduces the official analytic counter (`boss_madds.py`, docs/method.md#cost)
  to the unit: no batch norm and no biases, SE on all blocks (ResAtt included), fixed per-stage
  resolutions (r//4, r//4, r//8, r//16), and an empty stage costed as a 3x3 conv of planes² at the
  stage's nominal stride. For the supernet the official convention adds the `*_d` branches of
  block 0, layer 0 that the official code builds but never runs (bossnas_jax does not build them).

FLOPs for a benchmark are 2·MAdds. Everything is per image.

`python -m bossnas_jax.models.cost_report` prints the reference figures of docs/method.md#figures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from bossnas_jax import search_space as ss
from bossnas_jax.models import bossnet_spec as bs

CONVENTIONS = ("true", "official")


@dataclasses.dataclass(frozen=True)
class Cost:
  madds: int = 0
  params: int = 0

  def __add__(self, other: Cost) -> Cost:
    return Cost(self.madds + other.madds, self.params + other.params)

  def __mul__(self, k: int) -> Cost:
    return Cost(self.madds * k, self.params * k)

  __rmul__ = __mul__

  @property
  def flops(self) -> int:
    return 2 * self.madds


ZERO = Cost()


def total(costs: Iterable[Cost]) -> Cost:
  out = ZERO
  for c in costs:
    out = out + c
  return out


def _check_convention(convention: str) -> None:
  if convention not in CONVENTIONS:
    raise ValueError(f"convention={convention!r}: expected one of {CONVENTIONS}.")


def _area(size) -> int:
  if isinstance(size, int):
    return size * size
  h, w = size
  return h * w


# ------------------------------------------------------------------------------------------------
# Primitives. `out_size` is the output feature-map side (or (h, w)); `tokens` a number of positions.


def conv2d(cin: int, cout: int, kernel: int, out_size, *, groups: int = 1,
           bias: bool = False) -> Cost:
  """k×k convolution (grouped when groups > 1; depthwise when groups == cin == cout)."""
  weights = kernel * kernel * (cin // groups) * cout
  return Cost(weights * _area(out_size), weights + (cout if bias else 0))


def dense(cin: int, cout: int, tokens: int = 1, *, bias: bool = False) -> Cost:
  """A dense layer applied at `tokens` positions (a 1x1 convolution when tokens = H·W)."""
  return Cost(cin * cout * tokens, cin * cout + (cout if bias else 0))


def batch_norm(channels: int) -> Cost:
  """Scale and bias; the running statistics are state, not parameters. No MAdds counted."""
  return Cost(0, 2 * channels)


def attention(width: int, heads: int, dim_head: int, tokens: int) -> Cost:
  """All-to-all MHSA without relative positions or output projection: the bias-free qkv 1x1
  (width -> 3·heads·dim_head), then q·kᵀ and attn·v, each heads·dim_head·tokens²."""
  inner = heads * dim_head
  return dense(width, 3 * inner, tokens) + Cost(2 * inner * tokens * tokens, 0)


def squeeze_excite(channels: int, reduced: int, *, bias: bool = True) -> tuple[Cost, Cost]:
  """Global mean -> fc C->r (bias) -> ReLU -> fc r->C (bias) -> sigmoid gate: its two fcs."""
  return dense(channels, reduced, bias=bias), dense(reduced, channels, bias=bias)


# ------------------------------------------------------------------------------------------------
# Residual blocks (ResConv / ResAtt), shared by the supernet and BossNet. The parts are keyed by
# the Flax module names of ops.py / bossnet.py, so a count can be checked module by module.


def residual_parts(*, attention_block: bool, cin: int, width: int, cout: int, in_size: int,
                   stride: int, heads: int = 0, dim_head: int = 64, shortcut: str = "identity",
                   se: int = 0, suffix: str = "", with_bn: bool = True,
                   with_bias: bool = True, out_size: int | None = None) -> dict[str, Cost]:
  """The parts of one residual block.

  The entry (1x1 at the input size, PEG of `stride`, BN) carries `suffix` in its names, as the
  supernet's down-scale entry does (`conv1_d`, ...); the trunk after it never does.
  `shortcut`: 'identity', 'proj' (1x1 + BN at the output size; BossNet's avg-down pool and the
  supernet's same-scale projection) or 'conv3x3' (3x3/s2 + BN, the supernet's down entry).
  `se`: reduced SE width, 0 for none.
  """
  n_out = bs.conv_out(in_size, 3, stride, 1) if out_size is None else out_size
  t_in, t_out = in_size * in_size, n_out * n_out
  bn = batch_norm if with_bn else (lambda c: ZERO)
  p: dict[str, Cost] = {}
  if attention_block:
    names = ("proj_conv", "proj_peg", "proj_bn")
  else:
    names = ("conv1", "peg", "bn1")
  p[names[0] + suffix] = dense(cin, width, t_in)
  p[names[1] + suffix] = conv2d(width, width, 3, n_out, groups=width, bias=with_bias)
  p[names[2] + suffix] = bn(width)
  if attention_block:
    inner = heads * dim_head
    p["attn"] = attention(width, heads, dim_head, t_out)
    p["attn_bn"] = bn(inner)
    p["out_conv"] = dense(inner, cout, t_out)
    p["out_bn"] = bn(cout)
  else:
    p["conv2"] = conv2d(width, width, 3, n_out)
    p["bn2"] = bn(width)
    p["conv3"] = dense(width, cout, t_out)
    p["bn3"] = bn(cout)
  if se:
    fc1, fc2 = squeeze_excite(cout, se, bias=with_bias)
    p["se_fc1"], p["se_fc2"] = fc1, fc2
  if shortcut == "proj":
    p["shortcut_conv" + suffix] = dense(cin, cout, t_out)
    p["shortcut_bn" + suffix] = bn(cout)
  elif shortcut == "conv3x3":
    p["shortcut_conv" + suffix] = conv2d(cin, cout, 3, n_out)
    p["shortcut_bn" + suffix] = bn(cout)
  elif shortcut != "identity":
    raise ValueError(f"shortcut={shortcut!r}")
  return p


# ------------------------------------------------------------------------------------------------
# The supernet (docs/method.md#search-space, #siamese): stem, adapters, candidate ops, necks and
# predictors.


def stem_cost(dims: ss.Dims) -> Cost:
  """conv 7x7/s2 (no bias) + BN; the ReLU and max-pool cost nothing here."""
  n = bs.conv_out(dims.resolution, 7, 2, 3)
  return conv2d(3, dims.stem_channels, 7, n) + batch_norm(dims.stem_channels)


def adapter_cost(dims: ss.Dims, d: int) -> Cost:
  """Block 0's patchify adapter from the stem to scale d: depthwise k=s/s, 1x1, BN."""
  c, s, n = dims.stem_channels, ss.stride_from_stem(d), dims.fmap(d)
  return conv2d(c, c, s, n, groups=c) + dense(c, dims.width(d), n * n) + batch_norm(dims.width(d))


def _op_in_channels(dims: ss.Dims, block: int, layer: int, d: int) -> int:
  return dims.width(d) if block == 0 and layer == 0 else dims.channels(d)


def op_parts(dims: ss.Dims, block: int, layer: int, op: int, *, down: bool) -> dict[str, Cost]:
  """Parts of candidate `op` of (block, layer) entered at its own scale or (down) from the next
  finer scale: the modules that entry runs, keyed by Flax module name."""
  if op not in ss.ops_in_block(block):
    raise ValueError(f"block {block} has no op {op}; it holds {ss.ops_in_block(block)}.")
  d = ss.op_scale(op)
  att = ss.is_attention(op)
  kw = dict(attention_block=att, width=dims.width(d), cout=dims.channels(d),
            heads=dims.heads(d) if att else 0, dim_head=dims.dim_head)
  if down:
    if d + 1 >= ss.BLOCK_DEPTHS[block]:
      raise ValueError(f"op {op} of block {block} has no down-scale entry.")
    return residual_parts(cin=dims.channels(d + 1), in_size=dims.fmap(d + 1), stride=2,
                          shortcut="conv3x3", suffix=ss.DOWN_SUFFIX, **kw)
  cin = _op_in_channels(dims, block, layer, d)
  return residual_parts(cin=cin, in_size=dims.fmap(d), stride=1,
                        shortcut="identity" if cin == dims.channels(d) else "proj", **kw)


def op_cost(dims: ss.Dims, block: int, layer: int, op: int, *, down: bool) -> Cost:
  """MAdds of one candidate op run through one entry, and the parameters that entry uses."""
  return total(op_parts(dims, block, layer, op, down=down).values())


def op_params(dims: ss.Dims, block: int, layer: int, op: int, convention: str = "true") -> int:
  """All parameters of a candidate op module: both entries where the down branch exists.

  In the official convention the `*_d` branch of block 0, layer 0 (built, never run) counts too.
  """
  _check_convention(convention)
  d = ss.op_scale(op)
  parts = dict(op_parts(dims, block, layer, op, down=False))
  has_down = ss.has_down_branch(block, layer, d) or (
      convention == "official" and d < ss.BLOCK_DEPTHS[block] - 1)
  if has_down:
    parts.update(op_parts(dims, block, layer, op, down=True))
  return total(parts.values()).params


def path_cost(dims: ss.Dims, block: int, in_scale: int | None, path: Sequence[int]) -> Cost:
  """A candidate path of a block: stem + adapter in block 0, then the 4 ops with the entries the
  path uses. Params equal those of `supernet.path_variables`."""
  path = tuple(path)
  if block == 0:
    in_scale = ss.STEM_SCALE
  elif in_scale is None:
    raise ValueError(f"block {block}: the input scale must be given.")
  c = ZERO
  prev = in_scale
  for i, o in enumerate(path):
    d = ss.op_scale(o)
    if block == 0 and i == 0:
      c = c + stem_cost(dims) + adapter_cost(dims, d)
      down = False
    else:
      if d not in (prev, prev - 1):
        raise ValueError(f"path {ss.format_path(path)} of block {block}: layer {i} goes from "
                         f"scale {prev} to {d}; a layer stays or halves once.")
      down = d == prev - 1
    c = c + op_cost(dims, block, i, o, down=down)
    prev = d
  return c


def block_params(dims: ss.Dims, block: int, convention: str = "true") -> int:
  """Every parameter of a supernet block (all candidates; stem and adapters for block 0)."""
  n = 0
  if block == 0:
    n += stem_cost(dims).params + sum(adapter_cost(dims, d).params for d in range(ss.NUM_SCALES))
  for layer in range(ss.LAYERS_PER_BLOCK):
    for op in ss.ops_in_block(block):
      n += op_params(dims, block, layer, op, convention)
  return n


def supernet_params(dims: ss.Dims | None = None, convention: str = "true") -> int:
  """The whole supernet backbone (official at full size: 854,265,344)."""
  dims = dims or ss.Dims()
  return sum(block_params(dims, b, convention) for b in range(ss.NUM_BLOCKS))


def fix_channels_cost(dims: ss.Dims, d: int) -> Cost:
  """The projector's adapter from scale d > 0 to the scale-0 width and size."""
  c, s, n = dims.channels(d), 2**d, dims.fmap(0)
  out = dims.neck_in_channels
  return conv2d(c, c, s, n, groups=c) + dense(c, out, n * n) + batch_norm(out)


def _mlp(cin: int, hidden: int, out: int) -> Cost:
  return dense(cin, hidden, bias=True) + batch_norm(hidden) + dense(hidden, out, bias=True)


def projector_cost(dims: ss.Dims, in_scale: int | None = None, hidden: int = 4096,
                   out: int = 256) -> Cost:
  """The projector neck. With `in_scale`, what a path ending at that scale runs (its adapter, if
  any, and the MLP); without, every parameter (all `fix_channels`; MAdds of the MLP alone)."""
  mlp = _mlp(dims.neck_in_channels, hidden, out)
  if in_scale is None:
    return mlp + Cost(0, sum(fix_channels_cost(dims, d).params for d in range(1, ss.NUM_SCALES)))
  return mlp + (fix_channels_cost(dims, in_scale) if in_scale > 0 else ZERO)


def fix_channels_params(dims: ss.Dims) -> int:
  return sum(fix_channels_cost(dims, d).params for d in range(1, ss.NUM_SCALES))


def predictor_cost(in_dim: int = 256, hidden: int = 4096, out: int = 256) -> Cost:
  return _mlp(in_dim, hidden, out)


# ------------------------------------------------------------------------------------------------
# BossNet (docs/method.md#bossnet).


def _fc(config: bs.BossNetConfig, with_bias: bool) -> Cost:
  return dense(config.num_features, config.num_classes, bias=with_bias)


def _true_parts(config: bs.BossNetConfig, resolution: int) -> dict[str, Cost]:
  parts: dict[str, Cost] = {}
  c = config.stem_channels
  n = bs.conv_out(resolution, 7, 2, 3)
  parts["conv1"] = conv2d(3, c, 7, n)
  parts["bn1"] = batch_norm(c)
  n = bs.conv_out(n, 3, 2, 1)
  for spec in bs.layout(config):
    for k, v in block_parts(spec, n, config.dim_head).items():
      parts[f"{spec.name}/{k}"] = v
    n = bs.block_out(spec, n)
  parts["fc"] = _fc(config, True)
  return parts


def block_parts(spec: bs.BlockSpec, in_size: int, dim_head: int = 64) -> dict[str, Cost]:
  """True-convention parts of one BossNet block at input side `in_size`."""
  if spec.kind == "empty":
    n = bs.block_out(spec, in_size)
    return {"conv": conv2d(spec.in_channels, spec.out_channels, 3, n),
            "bn": batch_norm(spec.out_channels)}
  return residual_parts(
      attention_block=spec.kind == "att", cin=spec.in_channels, width=spec.width,
      cout=spec.out_channels, in_size=in_size, stride=spec.stride, heads=spec.heads,
      dim_head=dim_head, shortcut="proj" if spec.shortcut else "identity",
      se=bs.se_width(spec.out_channels) if spec.se else 0)


def block_cost(spec: bs.BlockSpec, in_size: int, dim_head: int = 64) -> Cost:
  return total(block_parts(spec, in_size, dim_head).values())


def _official_parts(config: bs.BossNetConfig, resolution: int) -> dict[str, Cost]:
  """The official counter's arithmetic (see the module docstring)."""
  parts: dict[str, Cost] = {"conv1": _official_stem(config, resolution)}
  for spec in bs.layout(config):
    parts[spec.name] = _official_block(config, spec, resolution)
  parts["fc"] = _fc(config, False)
  return parts


def _official_stem(config: bs.BossNetConfig, resolution: int) -> Cost:
  return conv2d(3, config.stem_channels, 7, resolution // 2)


def _official_block(config: bs.BossNetConfig, spec: bs.BlockSpec, resolution: int) -> Cost:
  """One block as the official counter sees it: fixed per-stage sizes, whatever came before."""
  res = (resolution // 4, resolution // 4, resolution // 8, resolution // 16)
  i, s = spec.stage, config.stride(spec.stage)
  if spec.kind == "empty":
    return conv2d(spec.width, spec.width, 3, res[i] // s)
  first = spec.index == 0
  cin = spec.in_channels if first else spec.out_channels
  n_in = res[i] if first else res[i] // s
  stride = s if first else 1
  se = spec.out_channels // 16 if config.se else 0  # the counter's SE sits on every block
  p = residual_parts(
      attention_block=spec.kind == "att", cin=cin, width=spec.width, cout=spec.out_channels,
      in_size=n_in, stride=stride, heads=spec.width // config.dim_head,
      dim_head=config.dim_head, shortcut="proj" if cin != spec.out_channels else "identity",
      se=se, with_bn=False, with_bias=False, out_size=n_in // stride)
  return total(p.values())


def bossnet_parts(model, resolution: int = 224, convention: str = "true") -> dict[str, Cost]:
  """Per-module costs of a BossNet (`model`: a config, a model name, an architecture string or a
  stage encoding). True-convention keys are Flax module paths (`layer3_3/attn`)."""
  _check_convention(convention)
  config = bs.resolve_config(model)
  bs.check_resolution(resolution)
  if convention == "official":
    return _official_parts(config, resolution)
  return _true_parts(config, resolution)


def bossnet_cost(model, resolution: int = 224, convention: str = "true") -> Cost:
  """MAdds and parameters of a BossNet at `resolution` (per image)."""
  return total(bossnet_parts(model, resolution, convention).values())


def architecture_cost(arch: str | ss.Architecture, resolution: int = 224,
                      convention: str = "true", **config) -> Cost:
  """The BossNet of a searched architecture ('5433-3230-0010-0000'): `bs.SEARCHED_OPTIONS` unless
  `config` overrides them (e.g. se=False, act='relu')."""
  return bossnet_cost(bs.config_from_architecture(arch, **config), resolution, convention)


# ------------------------------------------------------------------------------------------------
# A searched BossNet's cost, block by block. With every stage at its own stride (the
# `empty_stage_stride="stage"` layout), each BossNet layer's cost depends only on its stage, its
# kind and whether it opens its stage, and every stage has a fixed feature-map size. So the cost
# of an architecture is a fixed stem/head part plus one term per searched block that depends only
# on (block, input scale, path); the search (`search/problem.py`) adds these up instead of
# rebuilding whole networks.
# An empty stage is charged to the block whose layers skip it: block 0 when its path starts at
# 28x28 (stage 1 empty), block 3 when its path ends at 14x14 (stage 4 empty).


def _searched_config(config: dict) -> bs.BossNetConfig:
  """The options of a searched BossNet (`bs.SEARCHED_OPTIONS` unless overridden), on T0's
  encoding: the options alone set every per-layer cost."""
  config = {**bs.SEARCHED_OPTIONS, **config}
  if "encoding" in config:
    raise ValueError("pass BossNet options only; the block path gives the layers.")
  return bs.BossNetConfig(encoding=bs.T0_ENCODING, **config)


def _stage_of_scale(d: int) -> int:
  return ss.NUM_SCALES - 1 - d


def _searched_block_specs(config: bs.BossNetConfig, block: int, in_scale: int,
                          path: Sequence[int]) -> list[bs.BlockSpec]:
  """The BossNet blocks that a searched block becomes, with the empty stages it skips. Non-first
  blocks of a stage get index 1 whatever their true position: it costs the same."""
  prev = -1 if block == 0 else _stage_of_scale(in_scale)  # -1: the stem
  specs = []
  for op in path:
    stage = _stage_of_scale(ss.op_scale(op))
    specs += [bs.empty_stage_spec(config, e) for e in range(prev + 1, stage)]
    kind = 0 if ss.is_attention(op) else 1
    specs.append(bs.stage_block_spec(config, stage, 0 if stage != prev else 1, kind))
    prev = stage
  if block == ss.NUM_BLOCKS - 1:
    specs += [bs.empty_stage_spec(config, e) for e in range(prev + 1, bs.NUM_STAGES)]
  return specs


def _stage_input_sizes(config: bs.BossNetConfig, resolution: int) -> tuple[int, ...]:
  """Input side of each stage when every stage (empty or not) strides by its own stride."""
  n, sizes = bs.stem_out(resolution), []
  for i in range(bs.NUM_STAGES):
    sizes.append(n)
    n = bs.conv_out(n, 3, config.stride(i), 1)
  return tuple(sizes)


def searched_fixed_cost(resolution: int = 224, convention: str = "true", **config) -> Cost:
  """The part of a searched BossNet's cost that no block choice changes: stem and classifier."""
  _check_convention(convention)
  bs.check_resolution(resolution)
  cfg = _searched_config(config)
  if convention == "official":
    return _official_stem(cfg, resolution) + _fc(cfg, False)
  n = bs.conv_out(resolution, 7, 2, 3)
  return conv2d(3, cfg.stem_channels, 7, n) + batch_norm(cfg.stem_channels) + _fc(cfg, True)


def searched_block_cost(block: int, in_scale: int | None, path: Sequence[int],
                        resolution: int = 224, convention: str = "true", **config) -> Cost:
  """Block `block`'s share of the cost of the BossNet of any architecture in which it takes input
  at `in_scale` (ignored for block 0) and runs `path`. Summed over the 4 blocks and added to
  `searched_fixed_cost`, it equals `architecture_cost(arch, resolution, convention,
  empty_stage_stride="stage", **config)` exactly. The official counter uses fixed sizes per stage,
  so it decomposes too; an empty stage 1 at stride 2 (`empty_stage_stride="official"`) halves
  every later stage, so that layout does not decompose and is refused in the true convention."""
  _check_convention(convention)
  bs.check_resolution(resolution)
  cfg = _searched_config(config)
  if cfg.empty_stage_stride != "stage" and convention == "true":
    raise ValueError(
        "searched_block_cost: with empty_stage_stride='official' an empty stage 1 halves every "
        "later stage, so a block's cost depends on block 0's path; use architecture_cost.")
  in_scale = ss.STEM_SCALE if block == 0 else in_scale
  if in_scale is None:
    raise ValueError(f"block {block}: the input scale must be given.")
  ss.parse_path(ss.format_path(path), block, in_scale)  # SearchSpaceError if invalid.
  if convention == "official":
    return total(_official_block(cfg, spec, resolution)
                 for spec in _searched_block_specs(cfg, block, in_scale, path))
  return total(block_cost(spec, n, cfg.dim_head)
               for spec, n in searched_block_layers(block, in_scale, path, resolution, **config))


def searched_block_layers(block: int, in_scale: int | None, path: Sequence[int],
                          resolution: int = 224, **config) -> list[tuple[bs.BlockSpec, int]]:
  """The BossNet blocks (and skipped empty stages) that block `block`'s `path` becomes when it
  takes input at `in_scale`, each with its input side at `resolution`: the part of a searched
  BossNet this choice contributes (every stage at its own stride)."""
  cfg = _searched_config(config)
  in_scale = ss.STEM_SCALE if block == 0 else in_scale
  sizes = _stage_input_sizes(cfg, resolution)
  out = []
  for spec in _searched_block_specs(cfg, block, in_scale, path):
    n = sizes[spec.stage]
    if spec.index:  # Past the first block a stage runs at its output size.
      n = bs.conv_out(n, 3, cfg.stride(spec.stage), 1)
    out.append((spec, n))
  return out


def searched_output_side(resolution: int = 224, **config) -> int:
  """Side of a searched BossNet's last feature map (the head's input)."""
  cfg = _searched_config(config)
  return bs.conv_out(_stage_input_sizes(cfg, resolution)[-1], 3, cfg.stride(bs.NUM_STAGES - 1), 1)


if __name__ == "__main__":  # The old name runs cost_report's command.
  raise SystemExit(__import__("bossnas_jax.models.cost_report", fromlist=["main"]).main())
