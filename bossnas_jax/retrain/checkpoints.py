"""Checkpoints of a retraining workdir: verified Orbax steps of the TrainState (checkpoint_io).

Layout of a retraining workdir:
  config.json              the run's config (a restart with an incompatible one is refused)
  checkpoints/{step}       TrainState + meta (network, epoch, data iterator state, eval history)
  metrics.jsonl, tb/       training and evaluation metrics, TensorBoard events
  results.json             final top-1/top-5/NLL/ECE of the raw and the EMA model, best of both
  bossnet_raw/, bossnet_ema/   the final weights as single-model checkpoints (models/checkpoint.py
                           format): `launch/evaluate.py --checkpoint`, `convert export` to .npz
"""

from __future__ import annotations

import os

import jax
import ml_collections

from bossnas_jax.infra import checkpoint_io, files
from bossnas_jax.models import bossnet
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.retrain import optim
from bossnas_jax.retrain import state as state_lib

CHECKPOINTS = "checkpoints"
KIND = "bossnet_retrain"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINTS)


def is_retrain_dir(path: str) -> bool:
  return (files.isdir(checkpoint_dir(path))
          and files.isfile(os.path.join(path, files.CONFIG_JSON)))


def abstract_state(model: bossnet.BossNet, tx, resolution: int):
  """Host zeros shaped like a fresh TrainState (restores go to host memory, are verified there,
  then placed; see checkpoint_io.resume for why)."""
  return checkpoint_io.host_zeros(
      lambda: state_lib.init_state(model, tx, jax.random.key(0, impl="rbg"), resolution))


def save(workdir: str, state: state_lib.TrainState, meta: dict, keep: int) -> None:
  step = int(jax.device_get(state.step))
  checkpoint_io.save(checkpoint_dir(workdir), step, state, {"kind": KIND, **meta},
                     max_to_keep=keep)


def restore(workdir: str, model: bossnet.BossNet, tx, resolution: int):
  """(host TrainState, meta, step) of the newest step that verifies (older ones as fallback)."""
  host = abstract_state(model, tx, resolution)
  state, meta, step = checkpoint_io.restore(checkpoint_dir(workdir), abstract=host)
  check_kind(workdir, meta, step)
  return state, meta, step


def check_kind(workdir: str, meta: dict, step: int) -> None:
  if meta.get("kind") != KIND:
    raise checkpoint_io.CheckpointError(
        f"{checkpoint_dir(workdir)} step {step} is not a retraining checkpoint "
        f"(kind {meta.get('kind')!r}); use a fresh --workdir.")


def _newest_meta(directory: str, steps: list[int]) -> dict:
  import orbax.checkpoint as ocp

  errors = []
  with ocp.CheckpointManager(files.absolute(directory)) as mngr:
    for step in sorted(steps, reverse=True):
      try:
        return dict(mngr.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"])
      except Exception as e:  # noqa: BLE001  (Orbax raises bare Exception / ValueError)
        errors.append(f"step {step}: {e}")
  raise checkpoint_io.CheckpointError(f"no readable step in {directory}: {errors}")


def load_bossnet(workdir: str, *, ema: bool = False):
  """(BossNet, variables) of the newest verified step of a retraining workdir (float32)."""
  config = ml_collections.ConfigDict(files.read_json(os.path.join(workdir, files.CONFIG_JSON)))
  steps = checkpoint_io.all_steps(checkpoint_dir(workdir))
  if not steps:
    raise checkpoint_io.CheckpointError(f"{checkpoint_dir(workdir)} holds no checkpoint yet.")
  # The network comes from a step's meta (it does not need the data set to be readable); the
  # optimizer only shapes the abstract tree.
  meta = _newest_meta(checkpoint_dir(workdir), steps)
  net = bs.BossNetConfig.from_dict(meta["network"])
  model = bossnet.BossNet(net)
  tx, _ = optim.from_config(config.train, steps_per_epoch=1)
  state, _, _ = restore(workdir, model, tx, int(config.model.resolution))
  return model, state.variables(ema)
