"""Evaluation metrics of the retrained networks: top-k accuracy and calibration.

Calibration: the expected calibration error (Guo et al., 2017) over 15 equal-width bins of the
max-softmax confidence, as NAS calibration benchmarks report it: bin i holds the predictions with
confidence in (i/15, (i+1)/15] and ECE = sum_i (n_i / N) |accuracy_i - mean confidence_i|, in %.
The per-bin sums (`calibration_sums`) are plain sums, so batches, devices and hosts add up exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def topk_correct(logits, labels, ks=(1, 5)) -> dict[int, jax.Array]:
  """Number of samples whose label is among the top-k logits, for each k (ties broken as
  lax.top_k does). Labels < 0 (padding) never count."""
  kmax = min(max(ks), logits.shape[-1])
  _, top = jax.lax.top_k(logits, kmax)
  hit = (top == labels[:, None]) & (labels[:, None] >= 0)
  return {k: jnp.sum(jnp.any(hit[:, :min(k, kmax)], axis=-1)) for k in ks}


class TopKAccumulator:
  """Sums top-k hits over batches: `update(logits, labels)`, then `result()` -> {'top1': ...}."""

  def __init__(self, ks=(1, 5)):
    self.ks = tuple(ks)
    self.correct = {k: 0 for k in self.ks}
    self.count = 0

  def update(self, logits, labels, valid=None) -> None:
    labels = jnp.asarray(labels)
    if valid is not None:
      labels = jnp.where(jnp.asarray(valid), labels, -1)
    for k, v in topk_correct(logits, labels, self.ks).items():
      self.correct[k] += int(v)
    self.count += int(jnp.sum(labels >= 0))

  def result(self) -> dict[str, float]:
    n = max(self.count, 1)
    return {f"top{k}": 100.0 * self.correct[k] / n for k in self.ks} | {"count": self.count}


NUM_BINS = 15


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
