"""Single-model checkpoints: the variables of one BossNet (or the parts of a converted search
checkpoint) as a verified Orbax checkpoint (`infra/checkpoint_io.py`: checksums per array) with a
JSON description. `python -m bossnas_jax.convert import` writes them, and so does retraining for
its final weights (bossnet_raw/, bossnet_ema/); evaluation reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bossnas_jax.infra import checkpoint_io
from bossnas_jax.models import bossnet_spec as bs

FORMAT = "bossnas_jax/converted-v1"


def save(directory: str, variables: Mapping, meta: Mapping[str, Any]) -> None:
  """A verified Orbax checkpoint (step 0) of the variables, with `meta` as JSON."""
  checkpoint_io.save(directory, 0, variables, {"format": FORMAT, **meta})


def load(directory: str) -> tuple[dict, dict]:
  """(variables, meta) of a single-model checkpoint; checksums verified."""
  state, meta, _ = checkpoint_io.restore(directory)
  if meta.get("format") != FORMAT:
    raise checkpoint_io.CheckpointError(
        f"{directory}: not a bossnas_jax single-model checkpoint (format "
        f"{meta.get('format')!r}); pass one that `python -m bossnas_jax.convert import` or a "
        "retraining (bossnet_raw/, bossnet_ema/) wrote.")
  return state, meta


def load_bossnet(directory: str):
  """(BossNet module, variables) of a single-model BossNet checkpoint."""
  from bossnas_jax.models.bossnet import BossNet  # Flax only where a network is built.

  variables, meta = load(directory)
  if meta.get("kind") != "bossnet":
    raise checkpoint_io.CheckpointError(
        f"{directory} holds a {meta.get('kind')!r}, not a BossNet.")
  return BossNet(bs.BossNetConfig.from_dict(meta["config"])), variables
