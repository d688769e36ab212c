"""Per-block schedules (docs/method.md#ema, #optimizer). Both restart at the start of every block.

`k` is the micro-batch index within the block; an optimizer step after micro-batch k uses the
values at k, as the official hooks set them before every micro-batch.
"""

from __future__ import annotations

import math


def learning_rate(k: int, *, base_lr: float, iters_per_epoch: int, epochs: int,
                  warmup_epochs: float = 1, warmup_ratio: float = 1e-4) -> float:
  """Epoch-wise cosine from base_lr to 0 over the block's epochs, with a linear warm-up by
  micro-batch over the first `warmup_epochs` (mmcv 1.0.3 CosineAnnealing, by_epoch, min_lr 0)."""
  epoch = k // iters_per_epoch
  lr = base_lr * (1 + math.cos(math.pi * epoch / epochs)) / 2
  warmup = warmup_epochs * iters_per_epoch
  if k < warmup:
    lr *= 1 - (1 - k / warmup) * (1 - warmup_ratio)
  return lr


def ema_momentum(k: int, *, total: int, base: float = 0.99, end: float = 1.0) -> float:
  """BYOL's cosine EMA momentum: m = end - (end - base) * (cos(pi k / K) + 1) / 2."""
  return end - (end - base) * (math.cos(math.pi * k / total) + 1) / 2
