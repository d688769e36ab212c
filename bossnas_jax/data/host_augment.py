"""Host part of the BossNAS augmentation (docs/method.md#augmentations): decode, random resized
crop, flip.

One source image gives all its views from a single decode. The crop follows torchvision 0.8's
`RandomResizedCrop.get_params`; the crop is resized to the output resolution with PIL's bicubic
filter (what torchvision does on PIL images), reading only the crop's pixels. A JPEG is decoded at a
reduced DCT scale (`Image.draft`) when every crop of the image still has at least `resolution`
pixels on each side at that scale, so the result is downsampled in both cases.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

_BICUBIC = Image.Resampling.BICUBIC


def open_image(image: bytes | np.ndarray | Image.Image) -> Image.Image:
  """A PIL image from encoded bytes (not yet decoded), a (H, W[, C]) uint8 array or a PIL image."""
  if isinstance(image, Image.Image):
    return image
  if isinstance(image, (bytes, bytearray, memoryview)):
    return Image.open(io.BytesIO(image))
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise ValueError(f"Image arrays must be uint8, got {array.dtype}.")
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    return Image.fromarray(array, mode="L")
  if array.ndim == 3 and array.shape[-1] == 3:
    return Image.fromarray(array, mode="RGB")
  raise ValueError(f"Image arrays must be (H, W), (H, W, 1) or (H, W, 3), got {array.shape}.")


def crop_box(rng: np.random.Generator, width: int, height: int,
             scale: Sequence[float] = (0.08, 1.0),
             ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """(left, top, crop width, crop height) of one random resized crop, torchvision 0.8 semantics.

  Up to 10 tries of an area fraction uniform in `scale` and a log-uniform aspect ratio in `ratio`;
  if none fits the image, the largest centred crop whose ratio is clipped to `ratio`.
  """
  area = width * height
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  image_ratio = width / height
  if image_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif image_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def _decode_scale(image: Image.Image, boxes: Sequence[tuple[int, int, int, int]],
                  resolution: int) -> None:
  """Lets a JPEG decode at 1/2, 1/4 or 1/8 size if all crops keep >= `resolution` pixels a side."""
  if image.format != "JPEG":
    return
  smallest = min(min(w, h) for _, _, w, h in boxes)
  factor = 1
  while factor < 8 and smallest >= 2 * factor * resolution:
    factor *= 2
  if factor > 1:
    width, height = image.size
    # PIL picks the largest reduction whose size is at least the one asked for.
    image.draft("RGB" if image.mode != "L" else "L", (width // factor, height // factor))


def multi_view(image: bytes | np.ndarray | Image.Image, rng: np.random.Generator, *,
               resolution: int, num_views: int, scale: Sequence[float] = (0.08, 1.0),
               ratio: Sequence[float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """`num_views` independent crop + flip draws of one image: uint8 (num_views, R, R, 3).

  Grey images are repeated to 3 channels after resizing; other modes are converted to RGB.
  """
  pil = open_image(image)
  width, height = pil.size
  boxes = [crop_box(rng, width, height, scale, ratio) for _ in range(num_views)]
  flips = rng.random(num_views) < 0.5
  _decode_scale(pil, boxes, resolution)
  if pil.mode not in ("RGB", "L"):
    pil = pil.convert("RGB")
  pil.load()
  sx, sy = pil.size[0] / width, pil.size[1] / height  # < 1 after a reduced JPEG decode.
  views = np.empty((num_views, resolution, resolution, 3), np.uint8)
  for k, (left, top, w, h) in enumerate(boxes):
    box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    view = pil.resize((resolution, resolution), _BICUBIC, box=box)
    if flips[k]:  # PIL flips ~7x faster than a copy of a reversed numpy view.
      view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(view)
    views[k] = array if array.ndim == 3 else array[..., None]
  return views


def eval_image(image, resolution: int) -> np.ndarray:
  """One encoded image (or uint8 array) -> uint8 (r, r, 3) as the official evaluation sees it
  (retrain/main.py, DeiT): the shorter side resized to floor(r * 256 / 224), bicubic, then the
  centre r x r crop. Grey images become 3 equal channels."""
  img = open_image(image).convert("RGB")
  size = int(math.floor(resolution * 256 / 224))
  w, h = img.size
  scale = size / min(w, h)
  img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
  w, h = img.size
  left, top = (w - resolution) // 2, (h - resolution) // 2
  return np.asarray(img.crop((left, top, left + resolution, top + resolution)), np.uint8)
