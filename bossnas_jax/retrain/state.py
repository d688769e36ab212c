"""The retraining state pytree, its initialisation, the model EMA, and the network of a config.

    cfg = network_config(config, num_classes)     # BossNetConfig from config.model
    model = bossnet.BossNet(cfg, dtype)
    state = init_state(model, tx, key, resolution)
"""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from bossnas_jax.infra import errors
from bossnas_jax.models import bossnet
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.search import architecture

Tree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a retraining step changes. Parameters, statistics and the EMA are float32 whatever
  the compute dtype (docs/method.md#d10)."""

  step: jax.Array          # Optimizer steps taken.
  params: Tree
  batch_stats: Tree
  opt_state: Any
  ema_params: Tree         # Model EMA (timm ModelEma: parameters and BN buffers).
  ema_batch_stats: Tree

  def variables(self, ema: bool = False) -> dict:
    if ema:
      return {"params": self.ema_params, "batch_stats": self.ema_batch_stats}
    return {"params": self.params, "batch_stats": self.batch_stats}


def init_state(model: bossnet.BossNet, tx, key, resolution: int) -> TrainState:
  """A fresh network (the official init), its optimizer state, and an EMA equal to it."""
  variables = bossnet.init_variables(model, key, resolution)
  params, stats = variables["params"], variables["batch_stats"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                    opt_state=tx.init(params), ema_params=jax.tree.map(jnp.copy, params),
                    ema_batch_stats=jax.tree.map(jnp.copy, stats))


def ema_update(ema: Tree, new: Tree, decay) -> Tree:
  """ema <- decay * ema + (1 - decay) * new, written as ema + (1 - decay) * (new - ema): the same
  value, but the small increment is formed first, which keeps float32 accuracy at decay 0.99996."""
  return jax.tree.map(lambda e, x: e + (1.0 - decay) * (x - e), ema, new)




def _is_json_path(arch: str) -> bool:
  return arch.endswith(".json") or os.path.isfile(arch)


def network_config(config: ml_collections.ConfigDict, num_classes: int) -> bs.BossNetConfig:
  """The BossNetConfig of config.model: a named model, an architecture string or the path of an
  architecture.json (the searched network with its exported options), at the configured width,
  head width, drop-path rate and class count."""
  m = config.model
  arch = str(m.arch).strip()
  overrides = dict(num_classes=int(num_classes), drop_path_rate=float(m.drop_path_rate),
                   width_multiplier=float(m.width_multiplier), dim_head=int(m.dim_head))
  if m.empty_stage_stride is not None:
    overrides["empty_stage_stride"] = str(m.empty_stage_stride)
  try:
    if _is_json_path(arch):
      _, record = architecture.load_architecture(arch)
      return architecture.bossnet_config(record, **overrides)
    return bs.resolve_config(arch, **overrides)
  except bs.BossNetSpecError as e:
    raise errors.ConfigError(
        f"config.model.arch={arch!r} (--arch): {e} It may be a named model (bossnet_t0, "
        "bossnet_t0_nose, bossnet_t1), an architecture such as '5433-3230-0010-0000', or the "
        "path of a search's architecture.json.") from None
