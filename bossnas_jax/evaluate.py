"""Top-1/top-5 and calibration (ECE) of a BossNet checkpoint on a TFDS split (official eval).

Official eval (retrain/main.py, DeiT): resize the shorter side to floor(r * 256 / 224) with bicubic
interpolation, centre-crop r x r, ImageNet mean/std. Grey images become 3 equal channels.

Calibration: the expected calibration error (Guo et al., 2017) over 15 equal-width bins of the
max-softmax confidence, as NAS calibration benchmarks report it: bin i holds the predictions with
confidence in (i/15, (i+1)/15] and ECE = sum_i (n_i / N) |accuracy_i - mean confidence_i|, in %.
The per-bin sums (`calibration_sums`) are plain sums, so batches, devices and hosts add up exactly.

A checkpoint is a converted one (`bossnas_jax.convert`, e.g. an official PyTorch model), the
`bossnet_raw` / `bossnet_ema` export of a retraining workdir, or a retraining workdir itself (its
newest verified step; `ema=True` for the EMA weights).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from PIL import Image

from bossnas_jax import convert, files
from bossnas_jax.data import host_augment, sources
from bossnas_jax.infra import errors
from bossnas_jax.models import bossnet
from bossnas_jax.models import bossnet_spec as bs


def eval_image(image, resolution: int) -> np.ndarray:
  """One encoded image (or uint8 array) -> uint8 (r, r, 3) as the official evaluation sees it."""
  img = host_augment.open_image(image).convert("RGB")
  size = int(math.floor(resolution * 256 / 224))
  w, h = img.size
  scale = size / min(w, h)
  img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
  w, h = img.size
  left, top = (w - resolution) // 2, (h - resolution) // 2
  return np.asarray(img.crop((left, top, left + resolution, top + resolution)), np.uint8)


NUM_BINS = 15


class EvaluateError(errors.UserError, ValueError):
  """A checkpoint, resolution or evaluation setting that cannot be evaluated."""


def bin_index(confidence, num_bins: int = NUM_BINS):
  """Bin of each confidence in (i/n, (i+1)/n] (confidence 0 goes to bin 0)."""
  return jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)


def calibration_sums(logits, labels, valid=None, num_bins: int = NUM_BINS) -> dict[str, jax.Array]:
  """Per-bin sums of a batch: {'count', 'confidence', 'correct'} (each (num_bins,), float32),
  over the max-softmax confidence of the rows where `valid` (default: labels >= 0)."""
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels)
  valid = labels >= 0 if valid is None else jnp.asarray(valid, bool) & (labels >= 0)
  probs = jax.nn.softmax(logits, axis=-1)
  conf = jnp.max(probs, axis=-1)
  correct = (jnp.argmax(logits, axis=-1) == labels) & valid
  onehot = jax.nn.one_hot(bin_index(conf, num_bins), num_bins) * valid[:, None]
  return {"count": onehot.sum(0), "confidence": (onehot * conf[:, None]).sum(0),
          "correct": (onehot * correct[:, None]).sum(0)}


def expected_calibration_error(sums) -> float:
  """ECE (%) from summed `calibration_sums`."""
  count = np.asarray(sums["count"], np.float64)
  n = count.sum()
  if n == 0:
    return float("nan")
  safe = np.maximum(count, 1)
  gap = np.abs(np.asarray(sums["correct"], np.float64) / safe
               - np.asarray(sums["confidence"], np.float64) / safe)
  return float(100.0 * np.sum(count / n * gap))


class CalibrationAccumulator:
  """Sums `calibration_sums` over batches (in float64 on the host); `ece()` gives the ECE in %."""

  def __init__(self, num_bins: int = NUM_BINS):
    self.num_bins = num_bins
    self.sums = {k: np.zeros(num_bins, np.float64) for k in ("count", "confidence", "correct")}

  def update(self, logits, labels, valid=None) -> None:
    for k, v in calibration_sums(logits, labels, valid, self.num_bins).items():
      self.sums[k] += np.asarray(jax.device_get(v), np.float64)

  def ece(self) -> float:
    return expected_calibration_error(self.sums)


def load_model(checkpoint: str, *, ema: bool = False):
  """(BossNet, variables) of a converted/exported checkpoint or of a retraining workdir."""
  from bossnas_jax.retrain import checkpoints as retrain_ckpt  # The retraining code is optional.

  if retrain_ckpt.is_retrain_dir(checkpoint):
    return retrain_ckpt.load_bossnet(checkpoint, ema=ema)
  if ema:
    raise EvaluateError(f"--ema: {checkpoint} is a single-model checkpoint, not a retraining "
                     "workdir; evaluate its bossnet_ema export or the workdir instead.")
  if not files.isdir(checkpoint):
    raise EvaluateError(f"--checkpoint={checkpoint} does not exist: pass a converted checkpoint, "
                        "a retraining workdir or its bossnet_raw / bossnet_ema export.")
  return convert.load_bossnet(checkpoint)


def default_resolution(checkpoint: str) -> int:
  """The training resolution of a retraining workdir or of its bossnet_raw/bossnet_ema export;
  224 for any other checkpoint."""
  for folder in (checkpoint, os.path.dirname(checkpoint.rstrip("/"))):
    path = os.path.join(folder, "config.json")
    if files.isfile(path):
      config = files.read_json(path)
      if "augment" in config:  # A retraining config (not, say, a search workdir's).
        return int(config["model"]["resolution"])
  return 224


def evaluate(checkpoint: str, *, name: str, split: str, data_dir: str | None, resolution: int,
             batch_size: int = 64, limit: int | None = None, ema: bool = False,
             num_bins: int = NUM_BINS) -> dict[str, float]:
  """Top-1/top-5 and ECE (%) of the BossNet in `checkpoint` (a converted or exported Orbax
  checkpoint, or a retraining workdir; `ema` picks its EMA weights)."""
  if batch_size < 1:
    raise EvaluateError(f"--batch_size={batch_size}: the batch size must be at least 1.")
  if limit is not None and limit < 1:
    raise EvaluateError(f"--limit={limit}: evaluate at least 1 image (leave --limit out for the "
                        "whole split).")
  try:
    bs.check_resolution(resolution)
  except bs.BossNetSpecError as e:
    raise EvaluateError(f"--resolution={resolution}: {e}") from None
  model, variables = load_model(checkpoint, ema=ema)
  source = sources.open_source(name, split, data_dir)
  classes = model.config.num_classes
  if source.num_classes > classes:
    raise EvaluateError(f"{name} has {source.num_classes} classes but the checkpoint's classifier "
                     f"has {classes}: evaluate a network trained for this data set.")
  n = len(source) if limit is None else min(limit, len(source))
  acc = bossnet.TopKAccumulator((1, 5))
  calib = CalibrationAccumulator(num_bins)
  for start in tqdm.trange(0, n, batch_size, desc=f"evaluating on {name}:{split}", unit="batch"):
    idx = range(start, min(start + batch_size, n))
    items = source.read(idx)
    images = np.stack([eval_image(img, resolution) for img, _ in items])
    labels = np.asarray([label for _, label in items], np.int32)
    logits = bossnet.eval_logits(model, variables, bossnet.normalize_images(images))
    logits = jax.device_get(logits)
    acc.update(logits, labels)
    calib.update(logits, labels)
  return acc.result() | {"ece": calib.ece()}
