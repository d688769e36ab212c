"""Labelled batches for retraining a BossNet (docs/method.md#retraining-recipe): the resumable
training iterator with the host part of DeiT's augmentation, and the evaluation batches.

Host part of one training image (in this order, all with PIL):
  decode -> RandomResizedCrop (config.data.crop_scale, crop_ratio; torchvision's 10 tries and
  fallback, bicubic) -> horizontal flip (p 0.5) -> grey to RGB -> RandAugment
  (config.data.randaugment, `randaugment.py`) or, only when RandAugment is off, colour jitter
  (config.data.color_jitter; a number c means brightness = contrast = saturation = c and no hue, as
  timm's transform factory builds it). The device part (normalisation, random erasing, mixup/cutmix,
  label smoothing) is `mixing.train_inputs`, inside the jitted step.

Order and randomness: epoch e reads a permutation of the training split seeded with (seed, e) (its
own stream, so it never shares numbers with block training); the image at global position p of
epoch e is augmented from a generator seeded with (seed, e, p). Batches therefore depend on the
seed, the epoch and the global batch size only, not on the number of hosts, devices or workers.

Repeated augmentation (DeiT's RASampler, config.data.repeats = R; 1 = off). An epoch still has steps
= len(split) // global_batch global batches of G images (the remainder is dropped). Global batch t
holds u = ceil(G / R) distinct images, perm[t u], ..., perm[t u + u - 1], and position q of the
batch reads image perm[t u + (q mod u)]: every image appears R times in its batch (the last u R - G
of them R - 1 times when R does not divide G), at positions u apart, so that with at least R devices
the copies sit on different devices (as RASampler puts them on different GPUs) and each copy is
augmented independently (its own position p). An epoch thus reads about len(split) / R distinct
images, each R times; the epoch's permutation changes which ones.

Host h of H takes positions [h G/H, (h+1) G/H) of every global batch (the order of the mesh's
'data' axis; `batching.to_global` assembles them).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

import grain
import ml_collections
import numpy as np
from PIL import Image, ImageEnhance

from bossnas_jax.data import batching, host_augment, randaugment, sources

# The stream id of retraining in every seed (block training uses 0-2, see pipeline.py).
RETRAIN = 3

open_split = batching.open_split


def num_classes(data: ml_collections.ConfigDict) -> int:
  """The number of classes of the configured data set (from its training split's label feature)."""
  count = open_split(data, data.train_split).num_classes
  if count <= 0:
    raise sources.DataSourceError(
        f"Data set {data.name!r} does not declare its number of classes (its label feature is "
        f"not a ClassLabel); a classification set is needed for retraining.")
  return count


def num_examples(data: ml_collections.ConfigDict, split: str) -> int:
  """The number of images of `split` of the configured data set."""
  return len(open_split(data, split))


def epoch_seed(seed: int, epoch: int) -> int:
  return int(np.random.SeedSequence([seed, RETRAIN, epoch]).generate_state(1)[0])


def epoch_positions(num_images: int, seed: int, epoch: int, global_batch_size: int,
                    repeats: int = 1) -> np.ndarray:
  """Source indices read by epoch `epoch`: int64 (steps, global_batch_size), row t = global batch t.

  See the module doc for the repeated-augmentation layout; with repeats = 1 this is the epoch's
  permutation cut into full batches.
  """
  repeats = check_repeats(repeats)
  steps = batching.steps_per_epoch(num_images, global_batch_size)
  order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(num_images)
  distinct = math.ceil(global_batch_size / repeats)
  slots = np.arange(global_batch_size) % distinct
  return order[np.arange(steps)[:, None] * distinct + slots[None, :]]


def check_repeats(repeats) -> int:
  if (isinstance(repeats, bool) or not isinstance(repeats, numbers.Integral)
      or int(repeats) < 1):
    raise ValueError(f"config.data.repeats must be an integer >= 1 (1 = no repeated "
                     f"augmentation, 3 = DeiT's RASampler), got {repeats!r}.")
  return int(repeats)


def _range(values, name: str, *, upper: float | None) -> tuple[float, float]:
  try:
    low, high = (float(v) for v in values)
  except (TypeError, ValueError):
    raise ValueError(f"config.data.{name} must be a pair (low, high), got {values!r}.") from None
  if not 0 < low <= high or (upper is not None and high > upper):
    bound = f" <= {upper:g}" if upper is not None else ""
    raise ValueError(f"config.data.{name} must satisfy 0 < low <= high{bound}, got {values!r}.")
  return low, high


def color_jitter_factors(value) -> tuple[float, float, float, float] | None:
  """config.data.color_jitter -> (brightness, contrast, saturation, hue), or None when off.

  A number c means (c, c, c, 0) as in timm; a 3- or 4-sequence is taken as given.
  """
  if value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)
                       and float(value) == 0):
    return None
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    factors = (float(value),) * 3 + (0.0,)
  elif isinstance(value, (tuple, list)) and len(value) in (3, 4):
    factors = tuple(float(v) for v in value) + (0.0,) * (4 - len(value))
  else:
    raise ValueError(f"config.data.color_jitter must be None, a number or 3 or 4 numbers "
                     f"(brightness, contrast, saturation[, hue]), got {value!r}.")
  if min(factors) < 0 or factors[3] > 0.5:
    raise ValueError(f"config.data.color_jitter factors must be >= 0 (hue <= 0.5), got "
                     f"{value!r}.")
  return None if not any(factors) else factors


def color_jitter(image: Image.Image, factors: Sequence[float],
                 rng: np.random.Generator) -> Image.Image:
  """torchvision's ColorJitter on a PIL RGB image: the four adjustments in a random order, each
  with a factor uniform in [max(0, 1 - f), 1 + f] (hue: a shift uniform in [-h, h] turns)."""
  order = rng.permutation(4)
  draws = [rng.uniform(max(0.0, 1.0 - f), 1.0 + f) for f in factors[:3]]
  draws.append(rng.uniform(-factors[3], factors[3]))
  for index in order:
    if factors[index] == 0:
      continue
    if index == 0:
      image = ImageEnhance.Brightness(image).enhance(draws[0])
    elif index == 1:
      image = ImageEnhance.Contrast(image).enhance(draws[1])
    elif index == 2:
      image = ImageEnhance.Color(image).enhance(draws[2])
    else:
      hue, saturation, value = image.convert("HSV").split()
      shifted = (np.asarray(hue, np.int64) + int(draws[3] * 255)) % 256
      image = Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8), "L"), saturation,
                                  value)).convert("RGB")
  return image


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """The host part of one training image (module doc), seeded by a few integers."""

  resolution: int
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  randaugment: randaugment.RandAugment | None = None
  color_jitter: tuple[float, float, float, float] | None = None
  flip_prob: float = 0.5

  @classmethod
  def from_config(cls, data: ml_collections.ConfigDict, resolution: int) -> TrainTransform:
    if int(resolution) <= 0:
      raise ValueError(f"The training resolution must be positive, got {resolution}.")
    augment = randaugment.from_config(data.get("randaugment"))
    jitter = color_jitter_factors(data.get("color_jitter"))
    return cls(resolution=int(resolution),
               crop_scale=_range(data.crop_scale, "crop_scale", upper=1.0),
               crop_ratio=_range(data.crop_ratio, "crop_ratio", upper=None),
               randaugment=augment,
               # timm's factory: colour jitter only when no auto-augmentation is used.
               color_jitter=jitter if augment is None else None)

  def __call__(self, image, seed_words: Sequence[int]) -> np.ndarray:
    rng = np.random.default_rng([int(w) for w in seed_words])
    pil = host_augment.open_image(image)
    width, height = pil.size
    box = host_augment.crop_box(rng, width, height, self.crop_scale, self.crop_ratio)
    flip = rng.random() < self.flip_prob
    host_augment._decode_scale(pil, [box], self.resolution)
    if pil.mode not in ("RGB", "L"):
      pil = pil.convert("RGB")
    pil.load()
    sx, sy = pil.size[0] / width, pil.size[1] / height  # < 1 after a reduced JPEG decode.
    left, top, w, h = box
    out = pil.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC,
                     box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))
    if flip:
      out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if out.mode != "RGB":
      out = out.convert("RGB")
    if self.randaugment is not None:
      out = self.randaugment(out, rng)
    elif self.color_jitter is not None:
      out = color_jitter(out, self.color_jitter, rng)
    return np.asarray(out, np.uint8)


class _TrainBatch:
  """Batch k of a host's training stream -> {'image', 'label'} (a grain map over batch indices)."""

  def __init__(self, source, transform: TrainTransform, *, seed: int, steps: int,
               host: batching.HostSlice, first_epoch: int, repeats: int):
    self.source, self.transform, self.seed, self.steps = source, transform, seed, steps
    self.host, self.first_epoch, self.repeats = host, first_epoch, repeats
    self._positions = (None, None)  # (epoch, epoch_positions) of the last epoch read.

  def positions(self, epoch: int) -> np.ndarray:
    cached_epoch, positions = self._positions
    if cached_epoch != epoch:
      positions = epoch_positions(len(self.source), self.seed, epoch, self.host.global_batch,
                                  self.repeats)
      self._positions = (epoch, positions)
    return positions

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    epoch, step = divmod(int(index), self.steps)
    epoch += self.first_epoch
    row = self.positions(epoch)[step]
    r, local, offset = self.transform.resolution, self.host.local_batch, self.host.offset
    images = np.empty((local, r, r, 3), np.uint8)
    labels = np.empty((local,), np.int32)
    for j, (image, label) in enumerate(self.source.read(row[offset:offset + local])):
      labels[j] = label
      p = step * self.host.global_batch + offset + j
      images[j] = self.transform(image, (self.seed, RETRAIN, epoch, p))
    return {"image": images, "label": labels}


def train_iterator(data: ml_collections.ConfigDict, *, resolution: int, seed: int,
                   global_batch_size: int, num_epochs: int, first_epoch: int = 0,
                   process_index: int | None = None, process_count: int | None = None,
                   device_count: int | None = None, worker_count: int | None = None,
                   source: sources.ImageSource | None = None,
                   threads: int | None = None) -> grain.DatasetIterator:
  """This host's training batches of epochs first_epoch .. first_epoch + num_epochs - 1.

  Yields {'image': uint8 (local_batch, R, R, 3), 'label': int32 (local_batch,)}, steps_per_epoch
  batches per epoch. `get_state()` is a JSON-able dict; `set_state(state)` on a fresh iterator
  built with the same arguments continues with the very next batch. `source` defaults to
  config.data.train_split; processes and devices default to JAX's.
  """
  transform = TrainTransform.from_config(data, resolution)
  repeats = check_repeats(data.get("repeats", 1))
  if int(num_epochs) < 0 or int(first_epoch) < 0:
    raise ValueError(f"num_epochs ({num_epochs}) and first_epoch ({first_epoch}) must be >= 0.")
  source = source if source is not None else open_split(data, data.train_split)
  host = batching.HostSlice.create(global_batch_size, process_index=process_index,
                                   process_count=process_count, device_count=device_count)
  steps = batching.steps_per_epoch(len(source), global_batch_size)
  make_batch = _TrainBatch(source, transform, seed=seed, steps=steps, host=host,
                           first_epoch=int(first_epoch), repeats=repeats)
  worker_count = int(data.worker_count) if worker_count is None else int(worker_count)
  return batching.iterate(make_batch, int(num_epochs) * steps, worker_count=worker_count,
                          threads=threads)


class _EvalBatch:
  """Batch k of the evaluation split; positions past its end are padding with valid = False."""

  def __init__(self, source, resolution: int, host: batching.HostSlice):
    self.source, self.resolution, self.host = source, resolution, host

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    r, local = self.resolution, self.host.local_batch
    images = np.zeros((local, r, r, 3), np.uint8)
    labels = np.zeros((local,), np.int32)
    valid = np.zeros((local,), bool)
    positions = self.host.positions(index, len(self.source))
    for j, (image, label) in enumerate(self.source.read(positions)):
      labels[j] = label
      images[j] = host_augment.eval_image(image, r)
      valid[j] = True
    return {"image": images, "label": labels, "valid": valid}


def eval_steps(num_images: int, global_batch_size: int) -> int:
  """Global evaluation batches for `num_images` images (the last one padded)."""
  return math.ceil(num_images / global_batch_size)


def eval_iterator(data: ml_collections.ConfigDict, *, split: str, resolution: int,
                  global_batch_size: int, process_index: int | None = None,
                  process_count: int | None = None, device_count: int | None = None,
                  source: sources.ImageSource | None = None, threads: int = 2):
  """This host's evaluation batches of `split`, in order, with the official eval preprocessing.

  Yields {'image': uint8 (local_batch, R, R, 3), 'label': int32, 'valid': bool}: every image once,
  global batch k = images [k G, (k+1) G), host h its slice; the last batch is padded with zero
  images, label 0 and valid False, so every host yields eval_steps(len(split), G) batches.
  """
  if int(resolution) <= 0:
    raise ValueError(f"The evaluation resolution must be positive, got {resolution}.")
  source = source if source is not None else open_split(data, split)
  host = batching.HostSlice.create(global_batch_size, process_index=process_index,
                                   process_count=process_count, device_count=device_count)
  make_batch = _EvalBatch(source, int(resolution), host)
  return batching.iterate(make_batch, eval_steps(len(source), global_batch_size),
                          threads=threads)
