"""What a BossNet is, without any array code: its configuration, the named models and the layout.

`bossnet.py` builds the Flax network from a `BossNetConfig`, `cost.py` counts it and `convert/`
maps its variables to the official state_dict keys; all three walk the same `layout(config)`, so
the block list (kinds, widths, strides, shortcuts, drop-path rates) is decided here once.

The rules are those of the official retraining model (docs/method.md#bossnet-encoding,
#bossnet-definition):
  * 4 stages (56, 28, 14, 7 at 224), planes 64·2^i, out = 4·planes; the first block of a stage
    carries the stride: 1, 2, 2 and `last_stride` (2, or 1 for T1). The stride sits in the PEG.
  * a stage with no blocks is one conv3x3 stride 2 (+BN+act) to 4·planes; the official code uses
    stride 2 there even for stage 1 (`num_blocks == 0` branch), and so do we by default. Then an
    architecture whose first layer is at 28x28 runs every later stage at half its searched
    resolution; `empty_stage_stride="stage"` uses the stage's own stride instead (1 for stage 1),
    so that every layer runs at the scale the search chose. Weights are the same either way.
  * the first block of a stage has an avg-down shortcut (AvgPool2d(2, stride, ceil_mode,
    count_include_pad=False), Identity if the stride is 1, then conv1x1 + BN) when its stride is
    not 1 or its width changes; the others are identity residuals.
  * drop-path rate·idx/(n-1) on ResConv blocks only (idx the global block index, n = 16 blocks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from bossnas_jax import search_space as ss
from bossnas_jax.infra import errors

NUM_STAGES = 4
EXPANSION = 4
BASE_PLANES = (64, 128, 256, 512)
ACTIVATIONS = ("silu", "relu")
# The official T0 encoding (docs/method.md#bossnet-encoding): 1 = ResConv, 0 = ResAtt, stages
# 56 / 28 / 14 / 7.
T0_ENCODING = ((1,), (1,), (1, 1, 1, 0, 1), (0, 0, 0, 1, 0, 0, 0, 0, 0))


class BossNetSpecError(errors.UserError, ValueError):
  """A malformed BossNet encoding, architecture, model name or resolution."""


@dataclasses.dataclass(frozen=True)
class BossNetConfig:
  """A BossNet: stage encoding plus the options of docs/method.md#bossnet-definition.

  `encoding` holds 4 stages (56, 28, 14, 7), each a tuple of 1 (ResConv) / 0 (ResAtt).
  `width_multiplier` scales every channel count (1.0 is the paper's network; smaller values are for
  tests). Attention widths are the bottleneck widths, with `planes // dim_head` heads (1, 2, 4, 8
  at full width, as the official `heads` list).
  """

  encoding: tuple[tuple[int, ...], ...] = T0_ENCODING
  act: str = "silu"
  se: bool = True
  last_stride: int = 2
  num_classes: int = 1000
  drop_path_rate: float = 0.0
  width_multiplier: float = 1.0
  dim_head: int = 64
  empty_stage_stride: str = "official"  # or "stage" (see the module docstring)
  name: str = ""

  def __post_init__(self):
    enc = _check_encoding(self.encoding)
    object.__setattr__(self, "encoding", enc)
    if self.act not in ACTIVATIONS:
      raise BossNetSpecError(f"act={self.act!r}: expected one of {ACTIVATIONS}.")
    if self.empty_stage_stride not in ("official", "stage"):
      raise BossNetSpecError(
          f"empty_stage_stride={self.empty_stage_stride!r}: expected 'official' or 'stage'.")
    if self.last_stride not in (1, 2):
      raise BossNetSpecError(f"last_stride={self.last_stride}: expected 1 or 2.")
    if self.num_classes < 1:
      raise BossNetSpecError(f"num_classes={self.num_classes} must be positive.")
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise BossNetSpecError(f"drop_path_rate={self.drop_path_rate} must lie in [0, 1).")
    for i in range(NUM_STAGES):
      p = self.planes(i)
      if p < 1 or p != BASE_PLANES[i] * self.width_multiplier:
        raise BossNetSpecError(
            f"width_multiplier={self.width_multiplier} gives "
            f"{BASE_PLANES[i] * self.width_multiplier} planes in stage {i + 1}; use a power of "
            "two such as 1, 0.5 or 0.125.")
      if 0 in enc[i] and (p % self.dim_head or p < self.dim_head):
        raise BossNetSpecError(
            f"stage {i + 1} has attention of width {p}, which dim_head={self.dim_head} does not "
            "divide; choose a smaller dim_head.")
    full = ss.BASE_STEM_CHANNELS * self.width_multiplier
    if self.stem_channels < 1 or self.stem_channels != full:
      raise BossNetSpecError(f"width_multiplier={self.width_multiplier} gives a fractional stem.")

  def planes(self, stage: int) -> int:
    return int(BASE_PLANES[stage] * self.width_multiplier)

  def out_channels(self, stage: int) -> int:
    return EXPANSION * self.planes(stage)

  def heads(self, stage: int) -> int:
    return self.planes(stage) // self.dim_head

  @property
  def stem_channels(self) -> int:
    return int(ss.BASE_STEM_CHANNELS * self.width_multiplier)

  @property
  def num_features(self) -> int:
    return self.out_channels(NUM_STAGES - 1)

  def stride(self, stage: int) -> int:
    return (1, 2, 2, self.last_stride)[stage]

  def replace(self, **kw) -> BossNetConfig:
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["encoding"] = [list(s) for s in self.encoding]
    return d

  @classmethod
  def from_dict(cls, d: dict) -> BossNetConfig:
    d = dict(d)
    d["encoding"] = tuple(tuple(s) for s in d["encoding"])
    return cls(**d)


def _check_encoding(encoding) -> tuple[tuple[int, ...], ...]:
  try:
    stages = tuple(tuple(int(t) for t in s) for s in encoding)
    ok = all(t in (0, 1) and t == t2 for s, s2 in zip(encoding, stages) for t, t2 in zip(s, s2))
  except (TypeError, ValueError):
    ok, stages = False, ()
  if not ok or len(stages) != NUM_STAGES:
    raise BossNetSpecError(
        f"encoding {encoding!r}: expected {NUM_STAGES} stages (56, 28, 14, 7), each a list of "
        "1 (ResConv) / 0 (ResAtt), like [[1], [1], [1,1,1,0,1], [0,0,0,1,0,0,0,0,0]].")
  if not any(stages):
    raise BossNetSpecError(f"encoding {encoding!r} has no block at all.")
  return stages


# ------------------------------------------------------------------------------------------------
# Named models (docs/method.md#bossnet-definition) and construction from a searched architecture.

NAMED_MODELS = {
    "bossnet_t0": dict(act="silu", se=True, last_stride=2),
    "bossnet_t0_nose": dict(act="relu", se=False, last_stride=2),
    "bossnet_t1": dict(act="silu", se=True, last_stride=1),
}
# Evaluation resolutions of the published figures (docs/method.md#cost): T0^ is T0 at 288, T1^ T1
# at 256.
EVAL_RESOLUTIONS = {"bossnet_t0": (224, 288), "bossnet_t0_nose": (224,), "bossnet_t1": (224, 256)}


def canonical_name(name: str) -> str:
  key = name.strip().lower().replace("-", "_")
  key = {"t0": "bossnet_t0", "t0_nose": "bossnet_t0_nose", "t1": "bossnet_t1"}.get(key, key)
  if key not in NAMED_MODELS:
    raise BossNetSpecError(
        f"unknown BossNet model {name!r}; known: {', '.join(NAMED_MODELS)} (or give an "
        "architecture such as '5433-3230-0010-0000').")
  return key


def named_config(name: str, **overrides) -> BossNetConfig:
  """bossnet_t0 / bossnet_t0_nose / bossnet_t1 (also 'T0', 'bossnet_T0-nose', ...)."""
  key = canonical_name(name)
  kw = dict(encoding=T0_ENCODING, name=key, **NAMED_MODELS[key])
  kw.update(overrides)
  return BossNetConfig(**kw)


def encoding_from_architecture(arch: str | ss.Architecture) -> tuple[tuple[int, ...], ...]:
  """'5433-3230-0010-0000' (validated by search_space) -> the BossNet stage encoding."""
  if not isinstance(arch, ss.Architecture):
    try:
      arch = ss.parse_architecture(arch)
    except ss.SearchSpaceError as e:
      raise BossNetSpecError(str(e)) from None
  return arch.stage_encoding()


# The options of the BossNet a searched architecture becomes (cost, export, rate and retrain all
# ask here): T0's (SiLU, SE, a stride-2 last stage), and an empty stage at its stage's own stride
# ('stage'), so every layer runs at the scale its supernet op ran at during the search; the
# official builder's stride-2 empty stage ('official') would halve every stage after an empty
# stage 1 (docs/method.md#search-and-export).
SEARCHED_OPTIONS = {"act": "silu", "se": True, "last_stride": 2, "empty_stage_stride": "stage"}


def config_from_architecture(arch: str | ss.Architecture, **kw) -> BossNetConfig:
  """A BossNet of a searched architecture: SEARCHED_OPTIONS unless `kw` overrides them."""
  return BossNetConfig(encoding=encoding_from_architecture(arch), **{**SEARCHED_OPTIONS, **kw})


def resolve_config(model: str | BossNetConfig | Sequence, **kw) -> BossNetConfig:
  """A config from a config, a model name, an architecture string or a stage encoding."""
  if isinstance(model, BossNetConfig):
    return model.replace(**kw) if kw else model
  if isinstance(model, str):
    text = model.strip()
    if text and text[0].isdigit():
      return config_from_architecture(text, **kw)
    return named_config(text, **kw)
  return BossNetConfig(encoding=model, **kw)


def check_resolution(height: int, width: int | None = None) -> None:
  width = height if width is None else width
  for n in (height, width):
    if not ss.valid_resolution(n):
      raise BossNetSpecError(
          f"input resolution {height}x{width}: BossNet needs a positive multiple of "
          f"{ss.RESOLUTION_MULTIPLE} on each "
          "side (e.g. 224, 256, 288; 64 for tests).")


# ------------------------------------------------------------------------------------------------
# Layout.


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One block of a BossNet. `kind` is 'conv' (ResConv), 'att' (ResAtt) or 'empty' (a stage with
  no block: conv3x3/s2 + BN + act)."""

  name: str            # Flax module name, layer{stage+1}_{index}
  torch_prefix: str    # official state_dict prefix, layer{stage+1}.{index}
  stage: int           # 0..3
  index: int           # position in the stage
  kind: str
  in_channels: int
  width: int           # bottleneck width (planes; the attention width for ResAtt)
  out_channels: int
  stride: int
  heads: int = 0
  shortcut: bool = False  # projection (avg-down) shortcut; else identity
  se: bool = False
  drop_path: float = 0.0


def se_width(channels: int) -> int:
  """timm 0.3.2 SEModule: max(C // 16, 8) reduced channels."""
  return max(channels // 16, 8)


def stage_in_channels(config: BossNetConfig, stage: int) -> int:
  """Input width of a stage's first block: the stem's, else the previous stage's output (an empty
  stage outputs its own width too, so this never depends on which stages are empty)."""
  return config.stem_channels if stage == 0 else config.out_channels(stage - 1)


def empty_stage_spec(config: BossNetConfig, stage: int) -> BlockSpec:
  """The conv3x3 (+BN+act) that stands for a stage with no block."""
  stride = 2 if config.empty_stage_stride == "official" else config.stride(stage)
  return BlockSpec(f"layer{stage + 1}_0", f"layer{stage + 1}.0", stage, 0, "empty",
                   stage_in_channels(config, stage), config.planes(stage),
                   config.out_channels(stage), stride)


def stage_block_spec(config: BossNetConfig, stage: int, index: int, kind: int,
                     drop_path: float = 0.0) -> BlockSpec:
  """Block `index` of a stage; `kind` is the encoding bit (1 ResConv, 0 ResAtt). Only the first
  block of a stage strides and changes width, so nothing else about the stage matters."""
  out = config.out_channels(stage)
  inplanes = stage_in_channels(config, stage) if index == 0 else out
  stride = config.stride(stage) if index == 0 else 1
  shortcut = stride != 1 or inplanes != out
  name, prefix = f"layer{stage + 1}_{index}", f"layer{stage + 1}.{index}"
  if kind == 1:
    return BlockSpec(name, prefix, stage, index, "conv", inplanes, config.planes(stage), out,
                     stride, shortcut=shortcut, se=config.se, drop_path=drop_path)
  return BlockSpec(name, prefix, stage, index, "att", inplanes, config.planes(stage), out, stride,
                   heads=config.heads(stage), shortcut=shortcut)


def layout(config: BossNetConfig) -> tuple[BlockSpec, ...]:
  n_blocks = sum(len(s) for s in config.encoding)
  denom = max(n_blocks - 1, 1)
  specs = []
  idx = 0
  for i, stage in enumerate(config.encoding):
    if not stage:
      specs.append(empty_stage_spec(config, i))
      continue
    for j, t in enumerate(stage):
      drop = config.drop_path_rate * idx / denom if t == 1 else 0.0
      specs.append(stage_block_spec(config, i, j, t, drop))
      idx += 1
  return tuple(specs)


def conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
  """Output side of a PyTorch conv / max-pool (floor mode)."""
  return (n + 2 * padding - kernel) // stride + 1


def avg_pool_ceil_out(n: int, stride: int, window: int = 2) -> int:
  """Output side of AvgPool2d(window, stride, ceil_mode=True, padding 0) (PyTorch's rule: the
  last window must start inside the input)."""
  out = -(-(n - window) // stride) + 1
  if (out - 1) * stride >= n:
    out -= 1
  return out


def stem_out(resolution: int) -> int:
  """Side after conv7x7/s2/p3 and maxpool3x3/s2/p1."""
  return conv_out(conv_out(resolution, 7, 2, 3), 3, 2, 1)


def block_out(spec: BlockSpec, n: int) -> int:
  """Side after a block: every block resamples with a 3x3/pad-1 conv of its stride (the PEG, or the
  empty stage's conv), which agrees with the ceil-mode avg-down pool on the shortcut."""
  return conv_out(n, 3, spec.stride, 1)
