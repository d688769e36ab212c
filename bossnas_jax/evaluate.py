"""Top-1/top-5 of a BossNet checkpoint on a TFDS split, with the official eval preprocessing.

Official eval (retrain/main.py, DeiT): resize the shorter side to floor(r * 256 / 224) with bicubic
interpolation, centre-crop r x r, ImageNet mean/std. Grey images become 3 equal channels.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import tqdm
from PIL import Image

from bossnas_jax import convert
from bossnas_jax.data import host_augment, sources
from bossnas_jax.models import bossnet


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


def evaluate(checkpoint: str, *, name: str, split: str, data_dir: str | None, resolution: int,
             batch_size: int = 64, limit: int | None = None) -> dict[str, float]:
  """Top-1/top-5 (%) of the BossNet in `checkpoint` (a converted or exported Orbax checkpoint)."""
  if resolution % 32:
    raise ValueError(f"--resolution={resolution}: BossNet needs a multiple of 32 (224, 256, 288).")
  model, variables = convert.load_bossnet(checkpoint)
  source = sources.open_source(name, split, data_dir)
  classes = model.config.num_classes
  if source.num_classes > classes:
    raise ValueError(f"{name} has {source.num_classes} classes but the checkpoint's classifier "
                     f"has {classes}: evaluate a network trained for this data set.")
  n = len(source) if limit is None else min(limit, len(source))
  acc = bossnet.TopKAccumulator((1, 5))
  for start in tqdm.trange(0, n, batch_size, desc=f"evaluating on {name}:{split}", unit="batch"):
    idx = range(start, min(start + batch_size, n))
    items = [source[i] for i in idx]
    images = np.stack([eval_image(img, resolution) for img, _ in items])
    labels = np.asarray([label for _, label in items], np.int32)
    logits = bossnet.eval_logits(model, variables, bossnet.normalize_images(images))
    acc.update(jax.device_get(logits), labels)
  return acc.result()
