"""RandAugment on PIL images with timm's semantics (the retraining recipe's 'rand-m9-mstd0.5-inc1').

A spec string 'rand-<section>-<section>...' is parsed as timm parses it:
  m<int>     magnitude (default 10, the maximum level),
  n<int>     number of ops drawn per image (default 2),
  mstd<f>    standard deviation of a Gaussian perturbation of the magnitude (default 0; 'inf' or a
             value above 100 draws the magnitude uniformly in [0, m] as newer timm does),
  inc<int>   the increasing-severity op set when non-zero (timm turns it on for any value, also
             'inc0': we read 'inc0' as off).
Weighted op choice ('w<idx>') is not supported and raises an error, as does any other section.

Per image: `n` ops are drawn uniformly from the op set, with replacement; each drawn op is then
applied with probability 0.5 (timm builds every RandAugment op with prob 0.5), with its own
magnitude N(m, mstd) clipped to [0, 10], and, for the signed ops (rotate, shear, translate, the
increasing enhancements), a sign that is negative with probability 0.5. `RandAugment.draw(rng)`
returns these draws (`OpDraw`: name, applied, magnitude, negate) and `RandAugment.apply` applies
them, so the choice is observable; `__call__` is `apply(image, draw(rng))`. Every op draws the same
number of random numbers whether applied or not.

Level -> argument (magnitude m in [0, 10], L = m / 10):
  Rotate ±30L degrees; ShearX/ShearY ±0.3L; TranslateXRel/TranslateYRel ±0.45L of the image side;
  Posterize int(4L) bits kept, PosterizeIncreasing 4 - int(4L); Solarize threshold int(256L),
  SolarizeIncreasing 256 - int(256L); SolarizeAdd int(110L) added below 128;
  Color/Contrast/Brightness/Sharpness 0.1 + 1.8L, their Increasing versions 1 ± 0.9L;
  AutoContrast, Equalize, Invert take no argument.
Geometric ops resample bicubically (the recipe's interpolation) and fill uncovered pixels with the
ImageNet mean in 8 bits, (124, 116, 104), as timm's transform factory sets them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0
# round(255 * ImageNet mean): the fill colour of the geometric ops.
MEAN_FILL = (124, 116, 104)

STANDARD_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel")
INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


# --- The ops themselves: PIL image (RGB or L) + argument -> PIL image. ---------------------------

def _affine(image: Image.Image, coefficients, fill, resample) -> Image.Image:
  # PIL's AFFINE maps each output pixel (x, y) to the input point (a x + b y + c, d x + e y + f).
  return image.transform(image.size, Image.Transform.AFFINE, coefficients, resample=resample,
                         fillcolor=_fill_for(image, fill))


def _fill_for(image: Image.Image, fill):
  if image.mode == "L":
    return int(round(sum(fill) / len(fill)))
  return tuple(fill)


def shear_x(image, factor, fill=MEAN_FILL, resample=Image.Resampling.BICUBIC):
  return _affine(image, (1, factor, 0, 0, 1, 0), fill, resample)


def shear_y(image, factor, fill=MEAN_FILL, resample=Image.Resampling.BICUBIC):
  return _affine(image, (1, 0, 0, factor, 1, 0), fill, resample)


def translate_x_rel(image, fraction, fill=MEAN_FILL, resample=Image.Resampling.BICUBIC):
  return _affine(image, (1, 0, fraction * image.size[0], 0, 1, 0), fill, resample)


def translate_y_rel(image, fraction, fill=MEAN_FILL, resample=Image.Resampling.BICUBIC):
  return _affine(image, (1, 0, 0, 0, 1, fraction * image.size[1]), fill, resample)


def rotate(image, degrees, fill=MEAN_FILL, resample=Image.Resampling.BICUBIC):
  """Counter-clockwise rotation about the image centre, same size."""
  return image.rotate(degrees, resample=resample, fillcolor=_fill_for(image, fill))


def _lut(image: Image.Image, table: Sequence[int]) -> Image.Image:
  table = [int(v) for v in table]
  return image.point(table * (len(image.getbands())))


def auto_contrast(image, _=None, **__):
  return ImageOps.autocontrast(image)


def equalize(image, _=None, **__):
  return ImageOps.equalize(image)


def invert(image, _=None, **__):
  return ImageOps.invert(image)


def posterize(image, bits, **__):
  """Keeps the `bits` most significant bits of every channel (8 or more: unchanged; 0: black).

  A lookup table as PIL's ImageOps.posterize, which since Pillow 10 rejects bits = 0 (what
  PosterizeIncreasing gives at magnitude 10; older Pillow, which timm ran on, gave black).
  """
  if bits >= 8:
    return image
  mask = (0xFF << (8 - int(bits))) & 0xFF
  return _lut(image, [i & mask for i in range(256)])


def solarize(image, threshold, **__):
  """Values >= threshold become 255 - value."""
  return ImageOps.solarize(image, int(threshold))


def solarize_add(image, add, threshold=128, **__):
  """Adds `add` (saturating at 255) to values below `threshold`."""
  return _lut(image, [min(255, i + add) if i < threshold else i for i in range(256)])


def color(image, factor, **__):
  return ImageEnhance.Color(image).enhance(factor)


def contrast(image, factor, **__):
  return ImageEnhance.Contrast(image).enhance(factor)


def brightness(image, factor, **__):
  return ImageEnhance.Brightness(image).enhance(factor)


def sharpness(image, factor, **__):
  return ImageEnhance.Sharpness(image).enhance(factor)


# --- Level -> argument. ------------------------------------------------------------------------

def _signed(value: float, negate: bool) -> float:
  return -value if negate else value


def _no_argument(magnitude, negate):
  return None


_LEVELS: dict[str, Callable[[float, bool], object]] = {
    "AutoContrast": _no_argument,
    "Equalize": _no_argument,
    "Invert": _no_argument,
    "Rotate": lambda m, neg: _signed(m / MAX_LEVEL * 30.0, neg),
    "Posterize": lambda m, neg: int(m / MAX_LEVEL * 4),
    "PosterizeIncreasing": lambda m, neg: 4 - int(m / MAX_LEVEL * 4),
    "Solarize": lambda m, neg: int(m / MAX_LEVEL * 256),
    "SolarizeIncreasing": lambda m, neg: 256 - int(m / MAX_LEVEL * 256),
    "SolarizeAdd": lambda m, neg: int(m / MAX_LEVEL * 110),
    "Color": lambda m, neg: m / MAX_LEVEL * 1.8 + 0.1,
    "Contrast": lambda m, neg: m / MAX_LEVEL * 1.8 + 0.1,
    "Brightness": lambda m, neg: m / MAX_LEVEL * 1.8 + 0.1,
    "Sharpness": lambda m, neg: m / MAX_LEVEL * 1.8 + 0.1,
    "ColorIncreasing": lambda m, neg: 1.0 + _signed(m / MAX_LEVEL * 0.9, neg),
    "ContrastIncreasing": lambda m, neg: 1.0 + _signed(m / MAX_LEVEL * 0.9, neg),
    "BrightnessIncreasing": lambda m, neg: 1.0 + _signed(m / MAX_LEVEL * 0.9, neg),
    "SharpnessIncreasing": lambda m, neg: 1.0 + _signed(m / MAX_LEVEL * 0.9, neg),
    "ShearX": lambda m, neg: _signed(m / MAX_LEVEL * 0.3, neg),
    "ShearY": lambda m, neg: _signed(m / MAX_LEVEL * 0.3, neg),
    "TranslateXRel": lambda m, neg: _signed(m / MAX_LEVEL * 0.45, neg),
    "TranslateYRel": lambda m, neg: _signed(m / MAX_LEVEL * 0.45, neg),
}

_FUNCTIONS: dict[str, Callable] = {
    "AutoContrast": auto_contrast, "Equalize": equalize, "Invert": invert, "Rotate": rotate,
    "Posterize": posterize, "PosterizeIncreasing": posterize, "Solarize": solarize,
    "SolarizeIncreasing": solarize, "SolarizeAdd": solarize_add, "Color": color,
    "ColorIncreasing": color, "Contrast": contrast, "ContrastIncreasing": contrast,
    "Brightness": brightness, "BrightnessIncreasing": brightness, "Sharpness": sharpness,
    "SharpnessIncreasing": sharpness, "ShearX": shear_x, "ShearY": shear_y,
    "TranslateXRel": translate_x_rel, "TranslateYRel": translate_y_rel,
}
GEOMETRIC_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"})


def op_argument(name: str, magnitude: float, negate: bool = False):
  """The argument op `name` is called with at `magnitude` (None for argument-free ops)."""
  if name not in _LEVELS:
    raise ValueError(f"Unknown RandAugment op {name!r}; known ops: {sorted(_LEVELS)}.")
  return _LEVELS[name](float(magnitude), bool(negate))


def apply_op(image: Image.Image, name: str, argument, *, fill=MEAN_FILL,
             resample=Image.Resampling.BICUBIC) -> Image.Image:
  """Applies op `name` with its argument (as `op_argument` gives it) to a PIL image."""
  function = _FUNCTIONS[name]
  if name in GEOMETRIC_OPS:
    return function(image, argument, fill=fill, resample=resample)
  return function(image, argument)


@dataclasses.dataclass(frozen=True)
class OpDraw:
  """One drawn op of one image: name, whether it is applied (p = prob), its clipped magnitude and
  the sign draw (used by the signed ops only)."""

  name: str
  applied: bool
  magnitude: float
  negate: bool

  @property
  def argument(self):
    return op_argument(self.name, self.magnitude, self.negate)


@dataclasses.dataclass(frozen=True)
class RandAugment:
  """timm's RandAugment: `num_ops` ops drawn with replacement from `ops`, each applied with
  probability `prob`."""

  ops: tuple[str, ...] = INCREASING_OPS
  num_ops: int = 2
  magnitude: float = 10.0
  magnitude_std: float = 0.0
  prob: float = 0.5
  fill: tuple[int, int, int] = MEAN_FILL
  resample: int = Image.Resampling.BICUBIC

  def __post_init__(self):
    unknown = [name for name in self.ops if name not in _LEVELS]
    if unknown or not self.ops:
      raise ValueError(f"Unknown RandAugment ops {unknown} (or an empty op set).")
    if self.num_ops < 0:
      raise ValueError(f"RandAugment needs n >= 0 ops per image, got {self.num_ops}.")
    if not 0.0 <= self.magnitude <= MAX_LEVEL:
      raise ValueError(f"RandAugment magnitude must be in [0, {MAX_LEVEL:g}], got "
                       f"{self.magnitude}.")
    if not self.magnitude_std >= 0.0:
      raise ValueError(f"RandAugment mstd must be >= 0, got {self.magnitude_std}.")
    if not 0.0 <= self.prob <= 1.0:
      raise ValueError(f"RandAugment op probability must be in [0, 1], got {self.prob}.")

  @classmethod
  def parse(cls, spec: str, **kwargs) -> RandAugment:
    """A RandAugment from a timm spec such as 'rand-m9-mstd0.5-inc1' (see the module doc)."""
    if not isinstance(spec, str) or not spec.startswith("rand"):
      raise ValueError(f"RandAugment spec {spec!r} must be a string such as "
                       f"'rand-m9-mstd0.5-inc1' (or None / '' for no RandAugment).")
    sections = spec.split("-")
    if sections[0] != "rand":
      raise ValueError(f"RandAugment spec {spec!r} must start with 'rand-'.")
    magnitude, num_ops, std, increasing = MAX_LEVEL, 2, 0.0, False
    for section in sections[1:]:
      match = re.fullmatch(r"(mstd|inc|m|n)(\d+(?:\.\d*)?|inf)", section)
      if not match:
        raise ValueError(
            f"Unknown section {section!r} in RandAugment spec {spec!r}: the sections are "
            f"m<magnitude>, n<ops per image>, mstd<std> and inc<0|1> (weighted choice 'w' is "
            f"not supported), e.g. 'rand-m9-mstd0.5-inc1'.")
      key, value = match.groups()
      if key == "m":
        magnitude = float(value)
      elif key == "n":
        num_ops = int(float(value))
      elif key == "mstd":
        std = float(value)
      else:
        increasing = float(value) != 0
    ops = INCREASING_OPS if increasing else STANDARD_OPS
    return cls(ops=ops, num_ops=num_ops, magnitude=magnitude, magnitude_std=std, **kwargs)

  def _magnitude(self, rng: np.random.Generator) -> float:
    if self.magnitude_std == 0:
      value = self.magnitude
      rng.standard_normal()  # Keep the number of draws independent of the settings.
    elif math.isinf(self.magnitude_std) or self.magnitude_std > 100:
      value = rng.uniform(0.0, self.magnitude)
    else:
      value = rng.normal(self.magnitude, self.magnitude_std)
    return float(min(MAX_LEVEL, max(0.0, value)))

  def draw(self, rng: np.random.Generator) -> tuple[OpDraw, ...]:
    """The ops of one image: the same draws `__call__` applies."""
    draws = []
    for _ in range(self.num_ops):
      name = self.ops[int(rng.integers(len(self.ops)))]
      applied = bool(rng.random() < self.prob)
      magnitude = self._magnitude(rng)
      negate = bool(rng.random() > 0.5)
      draws.append(OpDraw(name, applied, magnitude, negate))
    return tuple(draws)

  def apply(self, image: Image.Image, draws: Sequence[OpDraw]) -> Image.Image:
    for op in draws:
      if op.applied:
        image = apply_op(image, op.name, op.argument, fill=self.fill, resample=self.resample)
    return image

  def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return self.apply(image, self.draw(rng))


def from_config(spec) -> RandAugment | None:
  """config.data.randaugment -> RandAugment, or None when it is None, '' or 'none'."""
  if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none")):
    return None
  return RandAugment.parse(spec)
