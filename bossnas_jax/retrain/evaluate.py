"""Top-1/top-5 and calibration (ECE) of a BossNet checkpoint on a TFDS split (official eval:
`host_augment.eval_image`, then the ImageNet mean/std of `data/normalize.py`).

Calibration: the expected calibration error of `metrics.py`.

A checkpoint is a single-model checkpoint (`models/checkpoint.py`: one that `python -m
bossnas_jax.convert import` made of an official PyTorch model, or the `bossnet_raw` / `bossnet_ema`
export of a retraining workdir), or a retraining workdir itself (its newest verified step;
`ema=True` for the EMA weights).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import tqdm

from bossnas_jax.data import host_augment, normalize, sources
from bossnas_jax.infra import errors, files
from bossnas_jax.models import bossnet
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.models import checkpoint as model_checkpoint
from bossnas_jax.retrain import metrics


class EvaluateError(errors.UserError, ValueError):
  """A checkpoint, resolution or evaluation setting that cannot be evaluated."""


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
  return model_checkpoint.load_bossnet(checkpoint)


def default_resolution(checkpoint: str) -> int:
  """The training resolution of a retraining workdir or of its bossnet_raw/bossnet_ema export;
  224 for any other checkpoint."""
  for folder in (checkpoint, os.path.dirname(checkpoint.rstrip("/"))):
    path = os.path.join(folder, files.CONFIG_JSON)
    if files.isfile(path):
      config = files.read_json(path)
      if "augment" in config:  # A retraining config (not, say, a search workdir's).
        return int(config["model"]["resolution"])
  return 224


def logits_batches(model, variables, source, resolution: int, batch_size: int,
                   limit: int | None = None, desc: str | None = None):
  """(logits, labels) on the host, batch by batch, of the first `limit` images of `source` (all by
  default) under the official evaluation preprocessing; a progress bar when `desc` is given."""
  n = len(source) if limit is None else min(limit, len(source))
  starts = range(0, n, batch_size)
  for start in tqdm.tqdm(starts, desc=desc, unit="batch") if desc else starts:
    items = source.read(range(start, min(start + batch_size, n)))
    images = np.stack([host_augment.eval_image(img, resolution) for img, _ in items])
    labels = np.asarray([label for _, label in items], np.int32)
    logits = bossnet.eval_logits(model, variables, normalize.normalize_images(images))
    yield jax.device_get(logits), labels


def evaluate(checkpoint: str, *, name: str, split: str, data_dir: str | None, resolution: int,
             batch_size: int = 64, limit: int | None = None, ema: bool = False,
             num_bins: int = metrics.NUM_BINS) -> dict[str, float]:
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
  acc = metrics.TopKAccumulator((1, 5))
  calib = metrics.CalibrationAccumulator(num_bins)
  for logits, labels in logits_batches(model, variables, source, resolution, batch_size, limit,
                                       desc=f"evaluating on {name}:{split}"):
    acc.update(logits, labels)
    calib.update(logits, labels)
  return acc.result() | {"ece": calib.ece()}
