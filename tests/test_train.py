"""Block training: LARS, schedules, the step on 8 devices, scope of updates, resume, corruption."""

import functools
import glob
import math
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_utils import assert_trees_equal, flat, prepare_data, tiny_config

from bossnas_jax import main_job
from bossnas_jax import search_space as ss
from bossnas_jax.data import normalize, pipeline
from bossnas_jax.infra import errors, files, parallel
from bossnas_jax.models import siamese, supernet
from bossnas_jax.train import lars as lars_lib
from bossnas_jax.train import loop, schedules
from bossnas_jax.train import step as step_lib

# ------------------------------------------------------------------------------------------------
# LARS (docs/method.md#optimizer) against a NumPy transcription of OpenSelfSup's loop.


def _numpy_lars(params, grads, bufs, lr, excluded, momentum=0.9, wd=1e-6, eta=1e-3):
  new_p, new_b = {}, {}
  for k, w in params.items():
    g = grads[k]
    if not np.any(g != 0):  # The optimizer hook drops all-zero gradients: no update at all.
      new_p[k], new_b[k] = w, bufs[k]
      continue
    if excluded[k]:
      local_lr, decay = 1.0, 0.0
    else:
      decay = wd
      local_lr = eta * np.linalg.norm(w) / (np.linalg.norm(g) + wd * np.linalg.norm(w))
    d = (g + decay * w) * local_lr * lr
    new_b[k] = momentum * bufs[k] + d
    new_p[k] = w - new_b[k]
  return new_p, new_b


def test_lars_matches_the_official_formula():
  rng = np.random.RandomState(0)
  params = {
      "conv": {"kernel": rng.randn(3, 3, 4, 8).astype(np.float32)},
      "bn": {"scale": rng.randn(8).astype(np.float32), "bias": rng.randn(8).astype(np.float32)},
      "dense": {"kernel": rng.randn(8, 5).astype(np.float32),
                "bias": rng.randn(5).astype(np.float32)},
      "unused": {"kernel": rng.randn(4, 4).astype(np.float32)},
      "zero_gamma": {"scale": np.zeros(8, np.float32)},
  }
  mask = lars_lib.lars_exclusion_mask(params)
  assert mask["conv"]["kernel"] is False and mask["bn"]["scale"] is True
  assert mask["dense"]["bias"] is True and mask["zero_gamma"]["scale"] is True
  opt = lars_lib.lars(momentum=0.9, weight_decay=1e-6, eta=1e-3)
  state = opt.init(params)
  keys = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  np_p = dict(zip(keys, jax.tree.leaves(params)))
  np_b = {k: np.zeros_like(v) for k, v in np_p.items()}
  excluded = dict(zip(keys, jax.tree.leaves(mask)))
  p = params
  for step, lr in enumerate((4.8, 3.6)):
    grads = jax.tree.map(lambda x: rng.randn(*x.shape).astype(np.float32), params)
    grads["unused"]["kernel"] = np.zeros((4, 4), np.float32)
    updates, state = opt.update(grads, state, p, learning_rate=lr)
    p = jax.tree.map(lambda w, u: w + u, p, updates)
    np_p, np_b = _numpy_lars(np_p, dict(zip(keys, jax.tree.leaves(grads))), np_b, lr, excluded)
    for k, v in zip(keys, jax.tree.leaves(p)):
      np.testing.assert_allclose(v, np_p[k], rtol=2e-5, atol=1e-6, err_msg=f"{k} step {step}")
  np.testing.assert_array_equal(p["unused"]["kernel"], params["unused"]["kernel"])
  np.testing.assert_array_equal(state.momentum["unused"]["kernel"], 0)
  # docs/method.md#d1: the zero-init γ is excluded from the trust ratio, so it moves (officially it
  # never did).
  assert np.any(np.asarray(p["zero_gamma"]["scale"]) != 0)


# ------------------------------------------------------------------------------------------------
# Schedules (docs/method.md#ema, #optimizer).


def test_learning_rate_schedule():
  lr = functools.partial(schedules.learning_rate, base_lr=4.8, iters_per_epoch=2503, epochs=6,
                         warmup_epochs=1, warmup_ratio=1e-4)
  after_warmup = [lr(e * 2503 + 5) for e in range(1, 6)]
  np.testing.assert_allclose(after_warmup, [4.4785, 3.6, 2.4, 1.2, 0.3215], atol=1e-4)
  no_warmup = functools.partial(schedules.learning_rate, base_lr=4.8, iters_per_epoch=2503,
                                epochs=6, warmup_epochs=0)
  assert no_warmup(0) == pytest.approx(4.8)
  assert lr(0) == pytest.approx(4.8 * 1e-4)
  for it in (1, 1000, 2502):
    assert lr(it) == pytest.approx(4.8 * (1 - (1 - it / 2503) * (1 - 1e-4)))
  assert lr(2503) == pytest.approx(4.4785, abs=1e-4)


def test_ema_schedule():
  m = functools.partial(schedules.ema_momentum, total=15018, base=0.99, end=1.0)
  assert m(7) == pytest.approx(0.99, abs=1e-6)
  assert m(7503) == pytest.approx(0.99499, abs=1e-5)
  assert m(15017) == pytest.approx(1.0, abs=1e-7)


# ------------------------------------------------------------------------------------------------
# The step.

DIMS = ss.Dims(1 / 16, 32, 8)
MODELS = siamese.Models(DIMS, 1, 64, 32, 64)
KEY = jax.random.key(0, impl="rbg")


def _identity_augment(key, views):
  del key
  return normalize.normalize(views.astype(jnp.float32) / 255.0)


def _mesh(n):
  return jax.make_mesh((n,), (parallel.AXIS,), devices=jax.devices()[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


@pytest.fixture(scope="module")
def block1():
  """Block 1 (input 14x14) with non-zero BN γ everywhere, so that every used leaf gets gradient."""
  opt = lars_lib.lars()
  state = step_lib.init_state(MODELS, KEY, opt)
  online = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.full_like(x, 0.7) if p[-1].key == "scale" else x, state.online)
  target = {"block": online["block"], "proj": online["proj"]}
  state = state.replace(online=online, target=jax.tree.map(jnp.copy, target))
  feats = jax.random.normal(jax.random.key(1), (16, 8, DIMS.fmap(1), DIMS.fmap(1),
                                                DIMS.channels(1)))
  return state, opt, feats


def _trainer(mesh, opt, acc_steps=2):
  return step_lib.BlockTrainer(MODELS, mesh, accumulate_steps=acc_steps,
                               augment=_identity_augment, optimizer=opt)


CANDIDATES = [(1, (3, 2, 1, 0)), (1, (2, 3, 3, 3)), (1, (1, 0, 0, 1))]


def test_shuffle_bn_target_equals_per_device_reference(block1):
  """Target pass on 8 devices = per-device slices of the permuted batch on 1 device, un-permuted."""
  state, opt, feats = block1
  mesh8, mesh1 = _mesh(8), _mesh(1)
  s, path = CANDIDATES[0]
  pair = jnp.stack([feats[:, 0], feats[:, 4]], axis=1)
  key = jax.random.key(5, impl="rbg")
  z8 = _trainer(mesh8, opt).target(parallel.replicate(state, mesh8), s, path,
                                   jax.device_put(pair, parallel.batch_sharded(mesh8)), key)
  perms = np.asarray(step_lib.shuffle_permutations(key, 16))
  assert perms.shape == (2, 16) and sorted(perms[0]) == list(range(16))
  assert not np.array_equal(perms[0], np.arange(16))  # It does move images between devices.
  shuffled = jnp.stack([pair[perms[v], v] for v in (0, 1)], axis=1)
  units = MODELS.units(s, path)
  slices = []
  for i in range(8):
    x = shuffled[2 * i:2 * i + 2]
    for u in units:
      x = step_lib.unit_forward(DIMS, jnp.float32, mesh1, u)(
          supernet.unit_params(state.target["block"], DIMS, u), x)
    d = ss.output_scale(path)
    slices.append(step_lib.target_head(MODELS, mesh1, d)(
        siamese.head_params(MODELS, state.target, d), x))
  z = np.asarray(jnp.concatenate(slices))
  ref = np.zeros_like(z)
  for v in (0, 1):
    ref[perms[v], v] = z[:, v]
  np.testing.assert_allclose(np.asarray(z8), ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(z8), axis=-1), 1.0, rtol=1e-5)


def test_online_on_8_devices_equals_the_mean_of_per_device_gradients(block1):
  state, opt, feats = block1
  mesh8, mesh1 = _mesh(8), _mesh(1)
  targets = jax.random.normal(jax.random.key(2), (16, 2, 32))
  s, path = CANDIDATES[1]
  pair = jnp.stack([feats[:, 1], feats[:, 5]], axis=1)
  zeros = jax.tree.map(jnp.zeros_like, state.online)
  acc8, loss8 = _trainer(mesh8, opt).online(
      parallel.replicate(state, mesh8), parallel.replicate(zeros, mesh8), s, path,
      jax.device_put(pair, parallel.batch_sharded(mesh8)),
      jax.device_put(targets, parallel.batch_sharded(mesh8)))
  t1 = _trainer(mesh1, opt)
  per_device = []
  losses = []
  for i in range(8):
    acc, loss = t1.online(state, jax.tree.map(jnp.zeros_like, state.online), s, path,
                          pair[2 * i:2 * i + 2], targets[2 * i:2 * i + 2])
    per_device.append(flat(acc))
    losses.append(float(loss))
  assert float(loss8) == pytest.approx(np.mean(losses), rel=1e-5)
  got = flat(acc8)
  for k in got:
    ref = np.mean([d[k] for d in per_device], axis=0)
    # Absolute slack for leaves whose true gradient is 0 (a bias right before BN): float noise.
    np.testing.assert_allclose(got[k], ref, rtol=1e-3, atol=1e-5, err_msg=k)
  assert -4 <= float(loss8) <= 4


def test_a_step_changes_only_sampled_paths_and_heads_and_ema_only_block_and_neck(block1):
  state, opt, feats = block1
  mesh = _mesh(8)
  trainer = _trainer(mesh, opt, acc_steps=1)
  st = parallel.replicate(state, mesh)
  acc = parallel.replicate(jax.tree.map(jnp.zeros_like, state.online), mesh)
  # Features are given directly: block 1's input (its prefix is not needed for this check).
  f = jax.device_put(feats, parallel.batch_sharded(mesh))
  pairs = [jnp.stack([f[:, j], f[:, 4 + j]], axis=1) for j in range(3)]
  zs = [trainer.target(st, s, p, pair, jax.random.fold_in(KEY, j))
        for j, ((s, p), pair) in enumerate(zip(CANDIDATES, pairs))]
  targets = sum(zs[1:], zs[0]) / 3
  for (s, p), pair in zip(CANDIDATES, pairs):
    acc, _ = trainer.online(st, acc, s, p, pair, targets)
  before, t_before = flat(state.online), flat(state.target)  # `update` donates its input.
  new, _ = trainer.update(st, acc, 0.5, 0.9)
  used = set()
  for s, p in CANDIDATES:
    for u in MODELS.units(s, p):
      names = supernet.unit_param_names(u)
      up = supernet.unit_params(state.online["block"], DIMS, u)
      for k, name in names.items():
        for path, _ in jax.tree_util.tree_flatten_with_path(up[k])[0]:
          used.add(jax.tree_util.keystr((jax.tree_util.DictKey("block"),
                                         jax.tree_util.DictKey(name)) + tuple(path)))
  after = flat(new.online)
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  block_changed = {k for k in changed if k.startswith("['block']")}
  assert block_changed <= used, sorted(block_changed - used)[:5]
  assert len(block_changed) > 0.5 * len(used)
  assert any(k.startswith("['pred']") for k in changed)
  assert any(k.startswith("['proj']['fc0']") for k in changed)
  # The 7x7 path has no fix_channels; the 14x14 paths use fix14 only.
  assert not any("fix28" in k or "fix56" in k for k in changed)
  # EMA: target = m * target + (1 - m) * new online, over the block and projector only.
  assert set(new.target) == {"block", "proj"}
  t_after = flat(new.target)
  on = flat({"block": new.online["block"], "proj": new.online["proj"]})
  for k in t_after:
    np.testing.assert_allclose(t_after[k], 0.9 * t_before[k] + 0.1 * on[k], rtol=1e-5,
                               atol=1e-6)
  assert int(new.step) == 1


def test_sample_paths_is_distinct_and_reproducible():
  cands = ss.all_candidates(0)
  a = step_lib.sample_paths(cands, 4, 0, 0, 17)
  assert a == step_lib.sample_paths(cands, 4, 0, 0, 17)
  assert len(set(a)) == 4
  assert a != step_lib.sample_paths(cands, 4, 0, 1, 17)  # Blocks differ (docs/method.md#d8).


# ------------------------------------------------------------------------------------------------
# The loop: resume, corruption, NaN, bad config.


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return prepare_data(str(tmp_path_factory.mktemp("train_data")))


class _Interrupt(Exception):
  pass


class _StopAfter:
  """A training iterator that is 'killed' after `n` batches (state methods pass through)."""

  def __init__(self, it, n):
    self.it, self.n = it, n

  def __next__(self):
    if self.n == 0:
      raise _Interrupt()
    self.n -= 1
    return next(self.it)

  def get_state(self):
    return self.it.get_state()

  def set_state(self, s):
    self.it.set_state(s)


def _train(config, workdir, monkeypatch=None, stop_after=None):
  """Block 0 as the main job trains it (with its ratings inside the block, if any)."""
  run = loop.Run.create(config, workdir)
  loop.save_config(config, workdir)
  chains = loop.as_chains([])
  if stop_after is not None:
    original = pipeline.train_iterator
    monkeypatch.setattr(pipeline, "train_iterator",
                        lambda *a, **k: _StopAfter(original(*a, **k), stop_after))
    with pytest.raises(_Interrupt):
      main_job.train_block(run, 0, chains)
    monkeypatch.setattr(pipeline, "train_iterator", original)
    return None
  return main_job.train_block(run, 0, chains)


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  state = _train(tiny_config(data_dir), workdir)
  assert int(state.step) == 4
  return workdir, state


def test_resume_equals_uninterrupted(data_dir, uninterrupted, tmp_path, monkeypatch):
  _, full = uninterrupted
  config = tiny_config(data_dir)
  workdir = str(tmp_path)
  # Killed in the middle of the second accumulation window of epoch 1 (micro-batch 5 of 8).
  _train(config, workdir, monkeypatch, stop_after=5)
  assert pipeline_steps(workdir) == [1, 2]
  resumed = _train(config, workdir)
  assert_trees_equal(resumed, full)
  lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
  assert len(lines) == 4  # Steps 1, 2 before the kill, 3, 4 after it.


class _SignalAfter(_StopAfter):
  """A training iterator that sends this process SIGINT (a real Ctrl-C) before batch n + 1."""

  def __next__(self):
    if self.n == 0:
      os.kill(os.getpid(), signal.SIGINT)
    self.n -= 1
    return next(self.it)


def test_ctrl_c_saves_the_step_stops_cleanly_and_resumes_equal(data_dir, uninterrupted, tmp_path,
                                                               monkeypatch):
  _, full = uninterrupted
  config = tiny_config(data_dir)
  workdir = str(tmp_path)
  run = loop.Run.create(config, workdir)
  loop.save_config(config, workdir)
  original = pipeline.train_iterator
  monkeypatch.setattr(pipeline, "train_iterator",
                      lambda *a, **k: _SignalAfter(original(*a, **k), 3))
  previous = signal.getsignal(signal.SIGINT)
  # Ctrl-C during micro-batch 4 of 8: the optimizer step it belongs to (2 of 4) is finished and
  # saved, then the run stops with one message instead of a KeyboardInterrupt somewhere.
  with pytest.raises(errors.Interrupted, match=r"block 0, optimizer step 2 of 4 \(SIGINT\).*"
                     "rerun the same command"):
    loop.train_block(run, 0, [])
  assert signal.getsignal(signal.SIGINT) is previous  # The handler is put back.
  assert pipeline_steps(workdir)[-1] == 2
  monkeypatch.setattr(pipeline, "train_iterator", original)
  assert_trees_equal(_train(config, workdir), full)


def test_rating_within_a_block_resumes_in_a_bucket_and_leaves_training_unchanged(
    data_dir, uninterrupted, bucket_dir, monkeypatch):
  """In a gs:// workdir (an emulated bucket), so that config, checkpoints, rating progress, rank
  files, metrics and events all go there; killed inside the rating after epoch 1 and resumed,
  the block ends where the uninterrupted run on a disk ends."""
  from bossnas_jax.infra import checkpoint_io
  from bossnas_jax.rating import block_rating, population_centre, rank_files
  _, full = uninterrupted
  config = tiny_config(data_dir)
  config.rating.rate_every_epochs = 1
  assert block_rating.rating_epochs(config) == {1, 2}
  workdir = bucket_dir
  # Rating progress after every candidate, as on a disk (in a bucket: every 30 s at most).
  monkeypatch.setattr(files, "REWRITE_SECONDS", 0.0)
  with pytest.raises(files.WorkdirError, match="gs://no-such-bucket/run does not exist"):
    main_job.run(config, "gs://no-such-bucket/run")
  calls = []
  original = population_centre.Rater.calibrate

  def killed_after_5(self, path):
    if len(calls) == 5:
      raise _Interrupt()
    calls.append(tuple(path))
    return original(self, path)

  # Killed while rating candidate 6 of 50 after epoch 1 (the checkpoint of that epoch is written).
  monkeypatch.setattr(population_centre.Rater, "calibrate", killed_after_5)
  with pytest.raises(_Interrupt):
    _train(config, workdir)
  assert pipeline_steps(workdir) == [1, 2]
  monkeypatch.setattr(population_centre.Rater, "calibrate",
                      lambda self, path: calls.append(tuple(path)) or original(self, path))
  state = _train(config, workdir)  # Finishes the rating, then epoch 2.
  # The resumed rating centres only the 45 candidates left, then scores all 50; the 5 centred
  # before the kill are recalibrated for their scores (BN statistics are not checkpointed).
  assert len(calls) == 5 + 45 + 5 and len(set(calls)) == 50
  assert_trees_equal(state, full)  # Ratings read the state; they never change training.
  rf = rank_files.read_rank_file(rank_files.rank_file_path(workdir, 0, ss.STEM_SCALE))
  assert rf.epoch == 1 and len(rf.scores) == 50
  history = files.listdir(os.path.join(workdir, "ratings", "history"))
  assert history == ["block0_in56_epoch1.json"]
  assert files.listdir(os.path.join(workdir, "ratings", "partial")) == []
  rows = files.read_text(os.path.join(workdir, "metrics.jsonl")).splitlines()
  assert len(rows) == 4  # Steps 1, 2 before the kill, 3, 4 after it.
  assert len(files.listdir(os.path.join(workdir, "tb"))) == 2  # One event file per process.
  assert files.read_json(os.path.join(workdir, "config.json"))["train"]["lr"] == 1.2
  assert pipeline_steps(workdir) == [2, 3, 4]  # keep_checkpoints = 3.
  assert files.exists(os.path.join(workdir, "checkpoints", "block0", "4",
                                   checkpoint_io.FILE_MANIFEST))
  assert loop._epoch_ended(8, 3, 2) is None and loop._epoch_ended(4, 3, 2) == 1  # Steps != epochs.


def pipeline_steps(workdir, block=0):
  from bossnas_jax.infra import checkpoint_io
  return checkpoint_io.all_steps(os.path.join(workdir, "checkpoints", f"block{block}"))


def _data_files(workdir, step):
  files = glob.glob(os.path.join(workdir, "checkpoints", "block0", str(step), "state", "**",
                                 "*"), recursive=True)
  files = [f for f in files if os.path.isfile(f) and "/d/" in f]
  assert files, "no Orbax data files found"
  return sorted(files, key=os.path.getsize)


def _flip(path):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x55
  open(path, "wb").write(bytes(data))


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def test_corrupt_newest_checkpoints_fall_back_and_recover(data_dir, uninterrupted, tmp_path,
                                                          capsys):
  source, full = uninterrupted
  workdir = str(tmp_path / "run")
  shutil.copytree(source, workdir)
  assert pipeline_steps(workdir) == [2, 3, 4]
  # Three kinds of damage at once (one resume, to keep the suite short): a flipped byte in step
  # 4 (which Orbax alone would restore silently), a truncated and a deleted file in step 3.
  _flip(_data_files(workdir, 4)[-1])
  step3 = _data_files(workdir, 3)
  _truncate(step3[-1])
  if len(step3) > 1:
    os.remove(step3[0])
  # The run goes back to step 2, the newest that verifies, and redoes steps 3 and 4.
  state = _train(tiny_config(data_dir), workdir)
  out = capsys.readouterr().out
  assert "checkpoint step 4" in out and "checkpoint step 3" in out and "moved to" in out
  assert "resumed from optimizer step 2" in out
  assert_trees_equal(state, full)
  assert pipeline_steps(workdir) == [2, 3, 4]
  for step in (3, 4):
    assert glob.glob(os.path.join(workdir, "checkpoints", "block0.corrupt", f"{step}-*"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(data_dir, tmp_path):
  config = tiny_config(data_dir, lr=1e38)
  with pytest.raises(errors.TrainingError,
                     match=r"block 0, optimizer step \d .* the loss is nan.* is kept"):
    _train(config, str(tmp_path))
  steps = pipeline_steps(str(tmp_path))
  assert steps and steps[0] == 1


def test_bad_inputs_are_clear_errors_before_work(data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.train.batch_size = 12
  with pytest.raises(ValueError, match=r"train.batch_size=12 does not split evenly over 8 "):
    main_job.check_config(config)
  config = tiny_config(data_dir, num_paths=17)
  with pytest.raises(errors.ConfigError, match=r"config.train.num_paths = 17 .* 1 \.\. 16"):
    main_job.check_config(config)
  config = tiny_config(data_dir)
  config.search.strategy = "random"
  with pytest.raises(errors.ConfigError, match=r"config.search.strategy = 'random'"):
    main_job.check_config(config)
  config = tiny_config(data_dir)
  config.model.resolution = 40
  with pytest.raises(errors.ConfigError, match=r"resolution=40"):
    main_job.check_config(config)
  config = tiny_config(data_dir)
  config.data.name = "no_such_dataset"
  with pytest.raises(Exception, match=r"no_such_dataset"):
    loop.Run.create(config, str(tmp_path))
  config = tiny_config(data_dir)
  loop.save_config(config, str(tmp_path))
  config.train.lr = 2.0
  with pytest.raises(ValueError, match=r"different config \(train.lr: 1.2 -> 2.0\)"):
    loop.save_config(config, str(tmp_path))
  config.train.lr = 1.2
  config.train.keep_checkpoints = 5  # Does not change what is computed: accepted.
  loop.save_config(config, str(tmp_path))
  (tmp_path / "file").write_text("")
  with pytest.raises(files.WorkdirError, match=r"--workdir .*file is a file; pass a folder"):
    main_job.run(tiny_config(data_dir), str(tmp_path / "file"))


def test_metrics_and_tensorboard_files(uninterrupted):
  from bossnas_jax.train import metrics
  workdir, _ = uninterrupted
  import json
  rows = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert all(math.isfinite(r["loss"]) and -4 <= r["loss"] <= 4 for r in rows)
  assert rows[0]["lr"] < rows[1]["lr"]  # Warm-up over the first epoch.
  events = glob.glob(os.path.join(workdir, "tb", "events.out.tfevents.*"))
  assert len(events) == 1
  data = open(events[0], "rb").read()
  # Walk the TFRecord frames and check every CRC.
  import struct
  pos, records = 0, []
  while pos < len(data):
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == metrics.masked_crc(data[pos:pos + 8])
    payload = data[pos + 12:pos + 12 + n]
    assert struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])[0] == metrics.masked_crc(payload)
    records.append(payload)
    pos += 16 + n
  assert len(records) == 5 and b"brain.Event:2" in records[0] and b"block0/loss" in records[1]
  assert metrics.crc32c(b"123456789") == 0xE3069283  # The CRC-32C check value.
