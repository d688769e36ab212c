"""The HyTra search space: the one place that knows scales, widths, ops and paths.

Vocabulary (docs/method.md#search-space):
  * scale ``d`` in 0..3 is a feature-map resolution; 0 is the coarsest (7x7 at 224), 3 the finest
    (56x56). A scale fixes the channel count (2048, 1024, 512, 256 at full width), whatever block
    the layer sits in.
  * op index 0..5 picks a candidate (docs/method.md#op-index): 0 ResAtt@7, 1 ResConv@7, 2 ResAtt@14,
    3 ResConv@14, 4 ResConv@28, 5 ResConv@56.
  * a path is 4 op indices, one per layer of a block, written "5433".
  * an architecture is 4 paths, one per block, written "5433-3230-0010-0000".

Every other module asks this one for these facts; none of them hard-codes a table.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence

from bossnas_jax.infra import errors

NUM_BLOCKS = 4
LAYERS_PER_BLOCK = 4
NUM_SCALES = 4
# Channels of a layer at scale d, full width (snet `layer_c`); the bottleneck width is a quarter.
BASE_CHANNELS = (2048, 1024, 512, 256)
# Scale names: the feature-map side at 224 input, as the paper and the rank files name them.
SCALE_NAMES = ("7", "14", "28", "56")
# Scales that exist in each block (the construction-time `stage_depths` [4, 3, 2, 2]): block b
# holds the candidates of scales 0 .. BLOCK_DEPTHS[b] - 1.
BLOCK_DEPTHS = (4, 3, 2, 2)
# The stem's output (64 channels at 56x56) is at the finest scale.
STEM_SCALE = 3
# Full-width stem channels (snet: 3 -> 64), of the supernet and of every BossNet.
BASE_STEM_CHANNELS = 64
# Names of a supernet op's down-scale entry modules (conv1_d, proj_d, shortcut_d ...) end so.
DOWN_SUFFIX = "_d"


@dataclasses.dataclass(frozen=True)
class Op:
  index: int
  attention: bool  # ResAtt if True, else ResConv.
  scale: int

  @property
  def name(self) -> str:
    return f"{'ResAtt' if self.attention else 'ResConv'}@{SCALE_NAMES[self.scale]}"


# The global op table (docs/method.md#op-index). Per scale the order is ResAtt (only at 7 and 14),
# then ResConv.
OPS = (
    Op(0, True, 0),
    Op(1, False, 0),
    Op(2, True, 1),
    Op(3, False, 1),
    Op(4, False, 2),
    Op(5, False, 3),
)
NUM_OPS = len(OPS)

Path = tuple[int, ...]


class SearchSpaceError(errors.UserError, ValueError):
  """A malformed or invalid path or architecture string."""


def op_scale(op: int) -> int:
  return OPS[op].scale


def is_attention(op: int) -> bool:
  return OPS[op].attention


def ops_in_block(block: int) -> tuple[int, ...]:
  """Op indices that exist in a block (those of its scales 0 .. BLOCK_DEPTHS[block] - 1)."""
  return tuple(o.index for o in OPS if o.scale < BLOCK_DEPTHS[block])


def has_down_branch(block: int, layer: int, d: int) -> bool:
  """Whether the op at scale d in (block, layer) has the `*_d` branch taking scale d + 1 input.

  Officially the branch exists iff d < BLOCK_DEPTHS[block] - 1. In layer 0 of block 0 those
  branches exist in the official code but are never run (the stem adapters feed every op at its own
  scale), so bossnas_jax does not build them; `cost.py` still counts them for the official figure.
  """
  return d < BLOCK_DEPTHS[block] - 1 and not (block == 0 and layer == 0)


def stride_from_stem(d: int) -> int:
  """Stride of block 0's patchify adapter from the stem (scale 3) to scale d."""
  return 2 ** (STEM_SCALE - d)


# ------------------------------------------------------------------------------------------------
# Dimensions: width multiplier and input resolution.


# Input sides must divide into the coarsest scale: the stem and 4 stages halve it 5 times.
RESOLUTION_MULTIPLE = 32


def valid_resolution(n) -> bool:
  """A positive multiple of RESOLUTION_MULTIPLE (the supernet's and every BossNet's input side)."""
  return isinstance(n, int) and n > 0 and n % RESOLUTION_MULTIPLE == 0


@dataclasses.dataclass(frozen=True)
class Dims:
  """The concrete sizes of a supernet: full size (1.0, 224, 64) or shrunk for tests and demos."""

  width_multiplier: float = 1.0
  resolution: int = 224
  dim_head: int = 64

  def __post_init__(self):
    if not valid_resolution(self.resolution):
      raise ValueError(
          f"resolution={self.resolution}: the HyTra space needs a positive multiple of "
          f"{RESOLUTION_MULTIPLE} "
          "(the coarsest scale is resolution/32); use e.g. 224, 256 or 32.")
    if self.width_multiplier <= 0:
      raise ValueError(f"width_multiplier={self.width_multiplier} must be positive.")
    for d in range(NUM_SCALES):
      c = BASE_CHANNELS[d] * self.width_multiplier
      if c != int(c) or int(c) % 4:
        raise ValueError(
            f"width_multiplier={self.width_multiplier} gives {c} channels at scale "
            f"{SCALE_NAMES[d]}; channels must be whole multiples of 4. Use a power of two "
            "such as 1, 0.5 or 0.0625.")
    for d in (0, 1):
      if self.width(d) % self.dim_head or self.width(d) < self.dim_head:
        raise ValueError(
            f"dim_head={self.dim_head} does not divide the attention width {self.width(d)} at "
            f"scale {SCALE_NAMES[d]} (width_multiplier={self.width_multiplier}); choose "
            f"dim_head dividing {self.width(1)}.")

  def channels(self, d: int) -> int:
    """Output channels of every op at scale d."""
    return int(BASE_CHANNELS[d] * self.width_multiplier)

  def width(self, d: int) -> int:
    """Bottleneck width at scale d (ResConv planes, ResAtt attention width)."""
    return self.channels(d) // 4

  def heads(self, d: int) -> int:
    """Attention heads at scale d (8 at 7x7 and 4 at 14x14 at full width)."""
    return self.width(d) // self.dim_head

  def fmap(self, d: int) -> int:
    """Feature-map side at scale d."""
    return self.resolution // 32 * 2**d

  @property
  def stem_channels(self) -> int:
    return int(BASE_STEM_CHANNELS * self.width_multiplier)

  @property
  def neck_in_channels(self) -> int:
    """All necks map a block's output to the channels of scale 0 (2048 at full width)."""
    return self.channels(0)


# ------------------------------------------------------------------------------------------------
# Path rules and enumeration (docs/method.md#paths).

# 'restricted': the rule the official search uses (`restricted_path`): the first layer stays at the
#   input scale or halves it once, then each layer stays or halves once.
# 'step': `all_path` (get_all_path_s2): first layer at any scale, then stay or halve once.
# 'free': `all_path_` (get_all_path): resolution never grows; jumps of several scales allowed.
RULES = ("restricted", "step", "free")


@functools.cache
def enumerate_paths(k: int, rule: str = "restricted") -> tuple[Path, ...]:
  """All paths over scales 0..k-1 (k = "stage depth") under a rule, in lexicographic order."""
  if rule not in RULES:
    raise ValueError(f"unknown path rule {rule!r}; expected one of {RULES}.")
  if not 1 <= k <= NUM_SCALES:
    raise ValueError(f"stage depth k={k} must lie in 1..{NUM_SCALES}.")
  ops = [o.index for o in OPS if o.scale < k]
  out = []
  for path in itertools.product(ops, repeat=LAYERS_PER_BLOCK):
    ds = [op_scale(o) for o in path]
    if rule == "restricted" and ds[0] not in (k - 1, k - 2):
      continue
    steps = zip(ds, ds[1:])
    if rule == "free":
      ok = all(b <= a for a, b in steps)
    else:
      ok = all(b in (a, a - 1) for a, b in steps)
    if ok:
      out.append(path)
  return tuple(out)


def input_scales(block: int) -> tuple[int, ...]:
  """Scales at which block `block` can receive its input, finest first.

  Block 0 takes the stem. A later block takes every scale at which some candidate of the block
  before it ends (docs/method.md#d5 makes every such scale usable).
  """
  _check_block(block)
  if block == 0:
    return (STEM_SCALE,)
  ends = {op_scale(p[-1]) for s in input_scales(block - 1) for p in candidates(block - 1, s)}
  return tuple(sorted(ends, reverse=True))


def accepts_input(block: int, d: int) -> bool:
  """Whether block `block` can take input at scale d: its first layer needs an op at d, or at d - 1
  with a `*_d` branch, which both exist iff d < BLOCK_DEPTHS[block]."""
  if block == 0:
    return d == STEM_SCALE
  return 0 <= d < BLOCK_DEPTHS[block]


def allowed_ops(block: int, in_scale: int, prefix: Sequence[int]) -> tuple[int, ...]:
  """Ops allowed at position len(prefix) of a path of `block` taking input at `in_scale`."""
  i = len(prefix)
  prev = in_scale if i == 0 else op_scale(prefix[-1])
  ok = []
  for o in ops_in_block(block):
    if op_scale(o) not in (prev, prev - 1):
      continue
    # docs/method.md#d5: the last layer may not end at a scale the next block cannot take.
    last = i == LAYERS_PER_BLOCK - 1
    if last and block + 1 < NUM_BLOCKS and not accepts_input(block + 1, op_scale(o)):
      continue
    ok.append(o)
  return tuple(ok)


@functools.cache
def candidates(block: int, in_scale: int) -> tuple[Path, ...]:
  """The candidate paths of block `block` taking input at scale `in_scale` (with docs/method.md#d5).

  These are the official `restricted_path[in_scale + 1]` minus the paths ending at a scale the next
  block cannot take: 50 for block 0 (the official 51 less '5555').
  """
  _check_block(block)
  if not accepts_input(block, in_scale):
    raise SearchSpaceError(
        f"block {block} cannot take input at scale {_scale_label(in_scale)}; it takes "
        f"{', '.join(_scale_label(d) for d in range(NUM_SCALES) if accepts_input(block, d))}.")
  return tuple(
      p for p in enumerate_paths(in_scale + 1, "restricted")
      if all(p[i] in allowed_ops(block, in_scale, p[:i]) for i in range(LAYERS_PER_BLOCK)))


def all_candidates(block: int) -> tuple[tuple[int, Path], ...]:
  """Every (input scale, path) pair of a block."""
  return tuple((s, p) for s in input_scales(block) for p in candidates(block, s))


def output_scale(path: Sequence[int]) -> int:
  return op_scale(path[-1])


def path_layer_scales(path: Sequence[int]) -> tuple[int, ...]:
  return tuple(op_scale(o) for o in path)


# ------------------------------------------------------------------------------------------------
# Strings.


def _scale_label(d: int) -> str:
  return f"{SCALE_NAMES[d]}x{SCALE_NAMES[d]}" if 0 <= d < NUM_SCALES else f"<scale {d}>"


def _describe_allowed(ops: Sequence[int]) -> str:
  return ", ".join(f"{o} ({OPS[o].name})" for o in ops)


def _check_block(block: int) -> None:
  if not (isinstance(block, int) and 0 <= block < NUM_BLOCKS):
    raise SearchSpaceError(f"block index {block!r} must be an integer in 0..{NUM_BLOCKS - 1}.")


def format_path(path: Sequence[int]) -> str:
  return "".join(str(o) for o in path)


def parse_path(text: str, block: int, in_scale: int | None = None) -> Path:
  """Parses and validates a path string such as '5433' for `block`.

  `in_scale` defaults to the stem for block 0; for later blocks it must be given (it is the output
  scale of the previous block). Errors name the position, what was found and what is allowed.
  """
  _check_block(block)
  if in_scale is None:
    if block != 0:
      raise SearchSpaceError(f"block {block}: the input scale must be given to check a path.")
    in_scale = STEM_SCALE
  where = f"path {text!r} of block {block}"
  if not isinstance(text, str):
    raise SearchSpaceError(f"{where}: expected a string of {LAYERS_PER_BLOCK} digits.")
  if not accepts_input(block, in_scale):
    raise SearchSpaceError(
        f"{where}: block {block} cannot take input at scale {_scale_label(in_scale)}.")
  if len(text) != LAYERS_PER_BLOCK:
    raise SearchSpaceError(
        f"{where}: expected {LAYERS_PER_BLOCK} op digits (one per layer), found {len(text)}.")
  path: list[int] = []
  for i, ch in enumerate(text):
    allowed = allowed_ops(block, in_scale, path)
    if not ch.isdigit() or int(ch) >= NUM_OPS:
      raise SearchSpaceError(
          f"{where}, position {i + 1}: found {ch!r}, which is not an op index 0-{NUM_OPS - 1}; "
          f"allowed here: {_describe_allowed(allowed)}.")
    o = int(ch)
    if o not in allowed:
      prev = in_scale if i == 0 else op_scale(path[-1])
      if o not in ops_in_block(block):
        why = (f"block {block} has no {OPS[o].name} (it holds ops "
               f"{format_path(ops_in_block(block))})")
      elif op_scale(o) not in (prev, prev - 1):
        src = "the input" if i == 0 else f"op {path[-1]} ({OPS[path[-1]].name})"
        why = (f"after {src} at {_scale_label(prev)} a layer must stay at that scale or halve "
               "it once")
      else:  # docs/method.md#d5
        why = (f"the path would end at {_scale_label(op_scale(o))}, which block {block + 1} "
               "cannot take")
      raise SearchSpaceError(
          f"{where}, position {i + 1}: op {o} ({OPS[o].name}) is not allowed: {why}; allowed "
          f"here: {_describe_allowed(allowed)}.")
    path.append(o)
  return tuple(path)


@dataclasses.dataclass(frozen=True)
class Architecture:
  """One candidate path per block, with chaining scales."""

  paths: tuple[Path, ...]

  def __str__(self) -> str:
    return format_architecture(self.paths)

  @property
  def ops(self) -> tuple[int, ...]:
    """The 16 op indices, block after block."""
    return tuple(o for p in self.paths for o in p)

  def input_scale(self, block: int) -> int:
    return STEM_SCALE if block == 0 else output_scale(self.paths[block - 1])

  def stage_encoding(self) -> tuple[tuple[int, ...], ...]:
    return stage_encoding(self.ops)

  def scale_chain(self) -> tuple[int, ...]:
    """The scale each block ends at. It fixes the rank file, and so the frozen prefix, that
    every later block's score comes from (docs/method.md#ranking-evaluation)."""
    return tuple(output_scale(p) for p in self.paths)


def format_architecture(paths: Sequence[Sequence[int]]) -> str:
  return "-".join(format_path(p) for p in paths)


def parse_architecture(text: str) -> Architecture:
  """Parses and validates '5433-3230-0010-0000' (16 digits without dashes are accepted too)."""
  if not isinstance(text, str):
    raise SearchSpaceError(f"architecture {text!r}: expected a string like '5433-3230-0010-0000'.")
  s = text.strip()
  parts = s.split("-") if "-" in s else (
      [s[i:i + LAYERS_PER_BLOCK] for i in range(0, len(s), LAYERS_PER_BLOCK)]
      if len(s) == NUM_BLOCKS * LAYERS_PER_BLOCK else [s])
  if len(parts) != NUM_BLOCKS:
    raise SearchSpaceError(
        f"architecture {text!r}: expected {NUM_BLOCKS} paths of {LAYERS_PER_BLOCK} digits "
        f"separated by '-' (like '5433-3230-0010-0000'), found {len(parts)}.")
  paths = []
  in_scale = STEM_SCALE
  for b, part in enumerate(parts):
    try:
      p = parse_path(part, b, in_scale)
    except SearchSpaceError as e:
      raise SearchSpaceError(f"architecture {text!r}: {e}") from None
    paths.append(p)
    in_scale = output_scale(p)
  return Architecture(tuple(paths))


def check_architecture(paths: Sequence[Sequence[int]]) -> Architecture:
  return parse_architecture(format_architecture(paths))


# ------------------------------------------------------------------------------------------------
# BossNet stage encoding (docs/method.md#bossnet-encoding).


def stage_encoding(ops: Sequence[int]) -> tuple[tuple[int, ...], ...]:
  """16 op indices -> 4 BossNet stages (56, 28, 14, 7), each a list of 1 (ResConv) / 0 (ResAtt).

  Layers are grouped by scale in order; a scale with no layers gives an empty stage, which BossNet
  builds as a single stride-2 conv3x3.
  """
  stages: list[list[int]] = [[] for _ in range(NUM_SCALES)]
  last = NUM_SCALES
  for i, o in enumerate(ops):
    d = op_scale(o)
    if d > last:
      raise SearchSpaceError(
          f"op sequence {format_path(ops)}: position {i + 1} goes back to a finer scale "
          f"({_scale_label(d)}); BossNet stages must run from fine to coarse.")
    last = d
    stages[NUM_SCALES - 1 - d].append(0 if is_attention(o) else 1)
  return tuple(tuple(s) for s in stages)


def format_stage_encoding(enc: Sequence[Sequence[int]]) -> str:
  return "[" + ", ".join("[" + ",".join(str(t) for t in s) + "]" for s in enc) + "]"


# The searched network of the paper (docs/method.md#bossnet-encoding): BossNet-T0.
BOSSNET_T0 = "5433-3230-0010-0000"
