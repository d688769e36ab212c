"""Rating toward the population centre (docs/method.md#rating, #rating-design, #d6, #d7, #d11).

For block b taking input at scale s, every candidate P of C(b, s) is rated on the rating set:
  1. BN recalibration (docs/method.md#d6): the exact statistics of every BN of P's target path and
     projector, and of its online path, projector and predictor, over the calibration set (both
     views).
  2. Target projections of both rating views, L2-normalised; their mean over C(b, s) is the
     population centre c_v of each image (docs/method.md#d7: normalised before averaging).
  3. Score(P) = mean over rating images of L(q_v1(P), c_v2) + L(q_v2(P), c_v1), with q the online
     prediction and L the head loss (-2 cos). Lower is better.

Candidates are processed one at a time in two passes (centre, then scores), with progress saved
after every candidate, so an interrupted rating redoes only the unfinished candidates. Evaluation
programs are compiled per layer configuration and shared by all candidates, as in training.
"""

from __future__ import annotations

import functools
import io
import math
import os
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import PartitionSpec as P

from bossnas_jax import search_space as ss
from bossnas_jax.infra import files, parallel
from bossnas_jax.infra.parallel import BATCH
from bossnas_jax.models import heads, siamese, supernet
from bossnas_jax.rating import bn_statistics, rank_files

# ------------------------------------------------------------------------------------------------
# Evaluation-mode programs.


@functools.cache
def unit_eval(dims: ss.Dims, dtype, mesh, unit: supernet.Unit):
  """(params, batch_stats, x pair) -> y pair with inference-mode BN."""
  def per_device(params, stats, pair):
    return siamese.per_view(lambda x: supernet.unit_apply(
        dims, unit, params, x, train=False, dtype=dtype, batch_stats=stats)[0], pair)

  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), BATCH), out_specs=BATCH))


@functools.cache
def heads_eval(models: siamese.Models, mesh, predict: bool):
  """(proj [, pred] variables, y pair) -> normalised projections, or raw predictions."""
  proj, pred = models.projector, models.predictor

  def per_device(variables, pair):
    def f(y):
      z = proj.apply(variables["proj"], y, train=False)
      return pred.apply(variables["pred"], z, train=False) if predict else heads.normalize(z)
    return siamese.per_view(f, pair)

  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), BATCH), out_specs=BATCH))


@functools.cache
def _loss_program(mesh):
  """Per-image symmetric loss of predictions q (B, 2, D) toward centres c (B, 2, D)."""
  def per_image(q, c):
    cos = lambda a, b: jnp.sum(heads.normalize(a) * heads.normalize(b), axis=-1)
    return -2 * cos(q[:, 0], c[:, 1]) - 2 * cos(q[:, 1], c[:, 0])

  return jax.jit(per_image)


def _module_moments(module: nn.Module, **kw):
  """A head module's train-mode apply that also returns its BN input moments."""
  def apply(params, x):
    y, mutated = module.apply({"params": params}, x, train=True,
                              mutable=["batch_stats", bn_statistics.MOMENTS], **kw)
    return y, mutated[bn_statistics.MOMENTS]
  return bn_statistics.with_bn_moments(apply)


@functools.cache
def _head_moments_apply(module: nn.Module):
  return _module_moments(module)


def _calibrate_heads(mesh, modules: Sequence[nn.Module], params: Sequence, xs) -> list[dict]:
  """Exact BN statistics of a chain of head modules over a list of (B, 2, ...) input pairs."""
  acc = [None] * len(modules)
  for pair in xs:
    for v in range(pair.shape[1]):
      x = pair[:, v]
      for i, (m, p) in enumerate(zip(modules, params)):
        x, moments = bn_statistics.moments_program(_head_moments_apply(m), mesh)(p, x)
        acc[i] = bn_statistics.merge_tree(acc[i], jax.device_get(moments))
  return [bn_statistics.to_batch_stats(a) for a in acc]


# ------------------------------------------------------------------------------------------------


class Rater:
  """Rates the candidates of one block at one input scale."""

  def __init__(self, models: siamese.Models, mesh, state: siamese.BlockState, in_scale: int,
               calibration_pairs: Sequence, rating_batches: Sequence):
    """`calibration_pairs`: (B, 2, ...) block inputs of the calibration set (through the frozen
    prefix); `rating_batches`: (pair, mask) of the rating set."""
    self.models, self.mesh, self.state, self.in_scale = models, mesh, state, in_scale
    self.calibration_pairs = list(calibration_pairs)
    self.rating_batches = list(rating_batches)

  def _units(self, path):
    return self.models.units(self.in_scale, path)

  def calibrate(self, path) -> dict:
    """BN statistics of the candidate's target and online networks (docs/method.md#d6)."""
    m, dims, dtype, mesh = self.models, self.models.dims, self.models.dtype, self.mesh
    units = self._units(path)
    d = ss.output_scale(path)
    out = {}
    for side in ("target", "online"):
      tree = getattr(self.state, side)
      params = [supernet.unit_params(tree["block"], dims, u) for u in units]
      # Block statistics, then the inputs of the heads (the path's outputs in train mode).
      ys = []
      stats = bn_statistics.calibrate_units(dims, dtype, mesh, units, params,
                                            self.calibration_pairs, outputs=ys)
      hp = siamese.head_params(m, tree, d)
      mods, hparams = [m.projector], [hp["proj"]]
      if side == "online":
        mods.append(m.predictor)
        hparams.append(hp["pred"])
      head_stats = _calibrate_heads(mesh, mods, hparams, ys)
      out[side] = {"units": [_unit_stats(stats, u) for u in units], "params": params,
                   "heads": {"proj": {"params": hp["proj"], "batch_stats": head_stats[0]}}}
      if side == "online":
        out[side]["heads"]["pred"] = {"params": hp["pred"], "batch_stats": head_stats[1]}
    return out

  def _forward(self, side_vars, path, pair, predict: bool):
    dims, dtype, mesh = self.models.dims, self.models.dtype, self.mesh
    x = pair
    for u, p, s in zip(self._units(path), side_vars["params"], side_vars["units"]):
      x = unit_eval(dims, dtype, mesh, u)(p, s, x)
    return heads_eval(self.models, mesh, predict)(side_vars["heads"], x)

  def target_projections(self, calibrated, path) -> list[jax.Array]:
    return [self._forward(calibrated["target"], path, pair, False)
            for pair, _ in self.rating_batches]

  def score(self, calibrated, path, centres: Sequence[jax.Array]) -> float:
    """Mean over the rating images of the symmetric loss toward the (summed) centre."""
    total, count = 0.0, 0.0
    for (pair, mask), c in zip(self.rating_batches, centres):
      q = self._forward(calibrated["online"], path, pair, True)
      per_image, m = parallel.fetch((_loss_program(self.mesh)(q, c), mask))
      per_image, m = per_image.astype(np.float64), m.astype(bool)
      total += float(per_image[m].sum())
      count += float(m.sum())
    return total / count


def _unit_stats(block_stats: dict, unit: supernet.Unit) -> dict:
  """Block-named batch statistics -> the unit's nesting ({'op'} or {'stem', 'adapter', 'op'})."""
  return {k: block_stats[name] for k, name in supernet.unit_param_names(unit).items()}


# ------------------------------------------------------------------------------------------------
# One rating of one (block, input scale), resumable per candidate.


# The progress of a rating is `<path>.json` (the candidates summed into the centre so far, the
# scores so far, and the name of the centre's file) and `<path>.centre<k>.npz` (the sum over k
# candidates). A centre file is written under a new name before the JSON that names it and the
# older one is deleted after, so a run killed between any two writes resumes from a consistent
# pair. In a bucket the JSON is rewritten at most every files.REWRITE_SECONDS.


def _load_progress(path: str, key: dict):
  if not files.exists(path + ".json"):
    return [], None, {}
  meta = files.read_json(path + ".json")
  if meta.get("key") != key:  # A rating of another epoch or chain: start again.
    return [], None, {}
  centre = None
  if meta["centred"]:
    # Progress files written before centres were named by their count have one fixed name.
    name = meta.get("centre", os.path.basename(path) + ".npz")
    with np.load(io.BytesIO(files.read_bytes(os.path.join(os.path.dirname(path), name)))) as z:
      centre = [z[f"c{i}"] for i in range(len(z.files))]
  scores = {tuple(int(c) for c in k): float(v) for k, v in meta["scores"].items()}
  return [tuple(int(c) for c in p) for p in meta["centred"]], centre, scores


def _centre_name(path: str, count: int) -> str:
  return f"{os.path.basename(path)}.centre{count}.npz"


def _save_progress(path: str, key: dict, centred, centre, scores) -> None:
  """Process 0 writes; `centre` (host arrays summed over `centred`) only while pass 1 runs."""
  if jax.process_index() != 0:
    return
  folder, name = os.path.dirname(path), _centre_name(path, len(centred))
  if centre is not None:
    buffer = io.BytesIO()
    np.savez(buffer, **{f"c{i}": c for i, c in enumerate(centre)})
    files.write_bytes(os.path.join(folder, name), buffer.getvalue())
  files.write_json(path + ".json", {
      "key": key, "centred": [ss.format_path(p) for p in centred], "centre": name,
      "scores": {ss.format_path(p): s for p, s in scores.items()}})
  if centre is not None:  # Pass 2 writes no centre, so it has no older one to delete.
    _remove_centres(path, keep=name)


def _remove_centres(path: str, keep: str | None = None) -> None:
  folder, stem = os.path.dirname(path), os.path.basename(path) + ".centre"
  for n in files.listdir(folder):
    if n.startswith(stem) and n != keep:
      files.remove(os.path.join(folder, n))


def rate(rater: Rater, candidates: Sequence[ss.Path], *, workdir: str, block: int,
         progress_key: dict, desc: str = "") -> dict[ss.Path, float]:
  """Scores of every candidate of one (block, input scale); resumes from saved progress."""
  path = rank_files.progress_path(workdir, block, rater.in_scale)
  centred, centre_host, scores = _load_progress(path, progress_key)
  sharding = parallel.batch_sharded(rater.mesh)
  if centre_host is not None:
    centre = [jax.device_put(c, sharding) for c in centre_host]
  else:
    centre = None
  cache = {}
  interval, saved_at = files.rewrite_interval(workdir), -math.inf

  def save(centre_host, last: bool) -> None:
    nonlocal saved_at
    if last or time.monotonic() - saved_at >= interval:
      _save_progress(path, progress_key, centred, centre_host, scores)
      saved_at = time.monotonic()

  bar = tqdm.tqdm(total=2 * len(candidates), initial=len(centred) + len(scores), unit="cand",
                  desc=desc or f"rating block {block}", dynamic_ncols=True)
  try:
    # Pass 1: the population centre (sum of normalised target projections; docs/method.md#d7).
    for p in candidates:
      if p in centred:
        continue
      cache[p] = rater.calibrate(p)
      zs = rater.target_projections(cache[p], p)
      centre = zs if centre is None else [a + z for a, z in zip(centre, zs)]
      centred.append(p)
      # Every host fetches (a collective); process 0 alone decides whether to write.
      save(parallel.fetch(list(centre)), last=len(centred) == len(candidates))
      bar.update(1)
    centre = [c / len(candidates) for c in centre]
    # Pass 2: every candidate's loss toward the centre.
    for p in candidates:
      if p in scores:
        continue
      calibrated = cache.pop(p, None) or rater.calibrate(p)
      scores[p] = rater.score(calibrated, p, centre)
      save(None, last=False)  # The last one goes straight into the rank file.
      bar.update(1)
  finally:
    bar.close()
  return scores


def clear_progress(workdir: str, block: int, in_scale: int) -> None:
  if jax.process_index() == 0:
    path = rank_files.progress_path(workdir, block, in_scale)
    files.remove(path + ".json")
    files.remove(path + ".npz")  # The fixed name of older progress files.
    _remove_centres(path)
