"""Rating toward the population centre: exact BN recalibration, centre and score, resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bossnas_jax import search_space as ss
from bossnas_jax.infra import parallel
from bossnas_jax.models import siamese, supernet
from bossnas_jax.rating import population_centre
from bossnas_jax.train import lars as lars_lib
from bossnas_jax.train import step as step_lib

DIMS = ss.Dims(1 / 16, 32, 8)
MODELS = siamese.Models(DIMS, 1, 64, 32, 64)
CANDIDATES = [(3, 2, 1, 0), (2, 3, 3, 3), (1, 0, 0, 1), (3, 3, 3, 2)]
IN_SCALE = 1


def _mesh(n):
  return jax.make_mesh((n,), (parallel.AXIS,), devices=jax.devices()[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


@pytest.fixture(scope="module")
def setup():
  key = jax.random.key(0, impl="rbg")
  state = step_lib.init_state(MODELS, key, lars_lib.lars())
  # Online and target differ, and BN γ are non-zero, as after some training.
  online = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.3 if p[-1].key == "scale" else x, state.online)
  target = jax.tree.map(lambda x: x * 0.9, {"block": online["block"], "proj": online["proj"]})
  state = state.replace(online=online, target=target)
  shape = (16, 2, DIMS.fmap(IN_SCALE), DIMS.fmap(IN_SCALE), DIMS.channels(IN_SCALE))
  rng = np.random.RandomState(0)
  calib = [rng.randn(*shape).astype(np.float32) * 1.5 + 0.5 for _ in range(2)]
  rate_batches = [(rng.randn(*shape).astype(np.float32), np.ones(16, bool)) for _ in range(2)]
  rate_batches[1][1][11:] = False  # A padded last batch.
  return state, calib, rate_batches


def _rater(mesh, setup):
  state, calib, rate_batches = setup
  put = lambda x: jax.device_put(x, parallel.batch_sharded(mesh))
  return population_centre.Rater(MODELS, mesh, parallel.replicate(state, mesh), IN_SCALE,
                                 [put(c) for c in calib],
                                 [(put(p), put(m)) for p, m in rate_batches])


def test_recalibration_is_exact_on_8_devices(setup):
  state, calib, _ = setup
  path = CANDIDATES[0]
  got = _rater(_mesh(8), setup).calibrate(path)
  # 1. The first BN sees inputs that no batch statistic has touched: compare with NumPy directly.
  op = supernet.make_op(DIMS, path[0], "op")
  params = supernet.unit_params(state.target["block"], DIMS, MODELS.units(IN_SCALE, path)[0])
  x = np.concatenate([c[:, v] for c in calib for v in (0, 1)])
  _, inter = op.apply({"params": params["op"]}, jnp.asarray(x), down=False, train=True,
                      mutable=["batch_stats", "intermediates"], capture_intermediates=True)
  h = np.asarray(inter["intermediates"]["peg"]["__call__"][0], np.float64).reshape(-1, 16)
  bn1 = got["target"]["units"][0]["op"]["bn1"]
  np.testing.assert_allclose(bn1["mean"], h.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn1["var"], h.var(0, ddof=1), rtol=1e-4, atol=1e-6)
  # 2. Every BN, heads and predictor included, equals processing each device's slice on its own
  #    on one device and merging the moments: the 8-device statistics are exact, not averaged.
  state1 = state
  per_slice = [c[2 * i:2 * i + 2] for c in calib for i in range(8)]
  ref = population_centre.Rater(MODELS, _mesh(1), state1, IN_SCALE, per_slice, []).calibrate(path)
  for side in ("target", "online"):
    a = {"units": got[side]["units"],
         "heads": jax.tree.map(lambda v: v, {k: v["batch_stats"]
                                             for k, v in got[side]["heads"].items()})}
    b = {"units": ref[side]["units"],
         "heads": {k: v["batch_stats"] for k, v in ref[side]["heads"].items()}}
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=2e-4, atol=1e-5), a, b)
  assert "pred" in got["online"]["heads"]  # docs/method.md#d6: the predictor is calibrated too.
  pred_var = got["online"]["heads"]["pred"]["batch_stats"]["bn0"]["var"]
  assert not np.allclose(pred_var, 1.0)


def _reference_scores(setup, calibrated):
  """Centre and scores with an independent forward: SupernetBlock + heads, in plain JAX."""
  state, _, rate_batches = setup
  block = supernet.SupernetBlock(DIMS, 1)
  proj, pred = MODELS.projector, MODELS.predictor

  def forward(side, path, x):
    cal = calibrated[path][side]
    stats = {}
    for u, s in zip(MODELS.units(IN_SCALE, path), cal["units"]):
      for k, name in supernet.unit_param_names(u).items():
        stats[name] = s[k]
    params = supernet.path_variables({"params": getattr(state, side)["block"]}, DIMS, 1,
                                     IN_SCALE, path)["params"]
    y = block.apply({"params": params, "batch_stats": stats}, x, path=path, in_scale=IN_SCALE,
                    train=False)
    z = proj.apply(cal["heads"]["proj"], y, train=False)
    return pred.apply(cal["heads"]["pred"], z, train=False) if side == "online" else z

  def cos(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.sum(a * b, -1)

  scores = {p: [] for p in CANDIDATES}
  for pair, mask in rate_batches:
    zs = {p: [np.asarray(forward("target", p, pair[:, v]), np.float64) for v in (0, 1)]
          for p in CANDIDATES}
    centre = [np.mean([zs[p][v] / np.linalg.norm(zs[p][v], axis=-1, keepdims=True)
                       for p in CANDIDATES], axis=0) for v in (0, 1)]
    for p in CANDIDATES:
      q = [np.asarray(forward("online", p, pair[:, v]), np.float64) for v in (0, 1)]
      loss = -2 * cos(q[0], centre[1]) - 2 * cos(q[1], centre[0])
      scores[p].extend(loss[mask].tolist())
  return {p: float(np.mean(v)) for p, v in scores.items()}


def test_centre_and_scores_match_a_direct_computation(setup, tmp_path):
  rater = _rater(_mesh(8), setup)
  got = population_centre.rate(rater, CANDIDATES, workdir=str(tmp_path), block=1,
                               progress_key={"epoch": 1})
  calibrated = {p: rater.calibrate(p) for p in CANDIDATES}
  want = _reference_scores(setup, calibrated)
  for p in CANDIDATES:
    assert got[p] == pytest.approx(want[p], abs=2e-5), ss.format_path(p)
    assert -4 <= got[p] <= 4
  assert len(set(round(v, 6) for v in got.values())) == len(CANDIDATES)


def test_interrupted_rating_redoes_only_unfinished_candidates(setup, tmp_path, monkeypatch):
  rater = _rater(_mesh(8), setup)
  full = population_centre.rate(rater, CANDIDATES, workdir=str(tmp_path / "a"), block=1,
                                progress_key={"epoch": 1})
  calls = []
  original = population_centre.Rater.calibrate

  def failing(self, path):
    calls.append(path)
    if len(calls) == 3:  # Killed while centring the third candidate.
      raise KeyboardInterrupt
    return original(self, path)

  monkeypatch.setattr(population_centre.Rater, "calibrate", failing)
  with pytest.raises(KeyboardInterrupt):
    population_centre.rate(rater, CANDIDATES, workdir=str(tmp_path / "b"), block=1,
                           progress_key={"epoch": 1})
  calls.clear()
  monkeypatch.setattr(population_centre.Rater, "calibrate",
                      lambda self, path: (calls.append(path), original(self, path))[1])
  resumed = population_centre.rate(rater, CANDIDATES, workdir=str(tmp_path / "b"), block=1,
                                   progress_key={"epoch": 1})
  # Pass 1 resumes at the third candidate; pass 2 recalibrates only those centred before the kill.
  assert calls == CANDIDATES[2:] + CANDIDATES[:2]
  for p in CANDIDATES:
    assert resumed[p] == pytest.approx(full[p], abs=1e-6)
  # Progress of another epoch is not reused.
  calls.clear()
  population_centre.rate(rater, CANDIDATES, workdir=str(tmp_path / "b"), block=1,
                         progress_key={"epoch": 2})
  assert len(calls) == 4
