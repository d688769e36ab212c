"""Retraining (docs/method.md#retraining-recipe, #retrain-and-evaluate): schedule, AdamW masks,
EMA, ECE, an 8-device end-to-end retrain with evaluation and export, resume equivalence (with a
corrupt newest checkpoint), bad inputs."""

import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_utils import assert_trees_equal, prepare_data

from bossnas_jax.data import embedded, mixing
from bossnas_jax.infra import checkpoint_io, errors, files, parallel
from bossnas_jax.models import bossnet
from bossnas_jax.retrain import checkpoints, evaluate, metrics, optim
from bossnas_jax.retrain import loop as retrain_loop
from bossnas_jax.retrain import state as state_lib
from bossnas_jax.retrain import step as step_lib
from configs import retrain as retrain_config

# ------------------------------------------------------------------------------------------------
# Schedule, optimizer, EMA.


def test_schedule_warms_up_from_1e6_to_the_scaled_peak_and_ends_at_min_lr():
  c = retrain_config.get_config()
  c.train.batch_size, c.train.epochs, c.train.warmup_epochs = 1024, 10, 5
  tx, schedule = optim.from_config(c.train, steps_per_epoch=20)
  peak = 5e-4 * 1024 / 512
  assert optim.peak_learning_rate(5e-4, 1024) == pytest.approx(1e-3)
  total, warm = 200, 100
  lrs = np.array([schedule(k) for k in range(total)])
  assert lrs[0] == pytest.approx(1e-6)
  assert lrs[50] == pytest.approx(1e-6 + (peak - 1e-6) / 2)  # linear in the step
  assert lrs[warm] == pytest.approx(peak)
  assert lrs[-1] == pytest.approx(1e-5)
  mid = warm + (total - 1 - warm) / 2  # half way down the cosine: the mean of peak and min
  assert optim.learning_rate(mid, peak=peak, total_steps=total, warmup_steps=warm) == \
      pytest.approx((peak + 1e-5) / 2)
  assert np.all(np.diff(lrs[:warm + 1]) > 0) and np.all(np.diff(lrs[warm:]) < 0)
  # The traced form (what optax evaluates inside the step) gives the same values.
  traced = jax.jit(jax.vmap(schedule))(jnp.arange(total))
  np.testing.assert_allclose(np.asarray(traced), lrs, rtol=1e-5)


def test_adamw_decays_kernels_but_not_biases_or_norm_parameters():
  params = {"conv": {"kernel": jnp.full((3, 3, 2, 4), 2.0)},
            "bn": {"scale": jnp.full((4,), 2.0), "bias": jnp.full((4,), 2.0)},
            "fc": {"kernel": jnp.full((4, 3), 2.0), "bias": jnp.full((3,), 2.0)}}
  mask = optim.decay_mask(params)
  assert mask == {"conv": {"kernel": True}, "bn": {"scale": False, "bias": False},
                  "fc": {"kernel": True, "bias": False}}
  lr, wd = 0.1, 0.05
  tx = optim.adamw(lambda _: lr, weight_decay=wd)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  # Zero gradients: Adam's part is 0, so only the decoupled decay moves a weight, by lr*wd*w.
  np.testing.assert_allclose(new["conv"]["kernel"], 2.0 * (1 - lr * wd), rtol=1e-6)
  np.testing.assert_allclose(new["fc"]["kernel"], 2.0 * (1 - lr * wd), rtol=1e-6)
  for leaf in (new["bn"]["scale"], new["bn"]["bias"], new["fc"]["bias"]):
    np.testing.assert_array_equal(leaf, 2.0)
  # On a real BossNet: every kernel is decayed; no BN parameter and no bias is.
  model = bossnet.build("bossnet_t0", num_classes=10, width_multiplier=1 / 16, dim_head=8)
  shapes = bossnet.variable_shapes(model, 32)["params"]
  flat = jax.tree_util.tree_flatten_with_path(optim.decay_mask(shapes))[0]
  for path, decayed in flat:
    name = path[-1].key
    assert decayed == (name == "kernel"), jax.tree_util.keystr(path)


def test_ema_update_formula():
  rng = np.random.default_rng(0)
  ema = {"a": rng.normal(size=(5,)).astype(np.float32)}
  new = {"a": rng.normal(size=(5,)).astype(np.float32)}
  out = state_lib.ema_update(ema, new, 0.9)
  np.testing.assert_allclose(out["a"], 0.9 * ema["a"] + 0.1 * new["a"], rtol=1e-6)
  # At decay 0.99996 a float32 EMA still moves by (1 - d) * (x - e).
  e, x = jnp.float32(1.0), jnp.float32(2.0)
  assert float(state_lib.ema_update(e, x, 0.99996)) == pytest.approx(1.00004, abs=1e-7)


# ------------------------------------------------------------------------------------------------
# Expected calibration error.


def _numpy_ece(logits, labels, bins=15):
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  conf, pred = p.max(1), p.argmax(1)
  acc = pred == labels
  edges = np.linspace(0, 1, bins + 1)
  ece = 0.0
  for lo, hi in zip(edges[:-1], edges[1:]):
    inside = (conf > lo) & (conf <= hi)
    if inside.any():
      ece += inside.mean() * abs(acc[inside].mean() - conf[inside].mean())
  return 100 * ece


def test_ece_matches_numpy_and_adds_up_over_batches():
  rng = np.random.default_rng(1)
  logits = (rng.normal(size=(300, 10)) * 3).astype(np.float32)
  labels = rng.integers(0, 10, 300).astype(np.int32)
  labels[:120] = logits[:120].argmax(1)  # Some correct predictions.
  want = _numpy_ece(logits.astype(np.float64), labels)
  acc = metrics.CalibrationAccumulator()
  for s in range(0, 300, 70):
    acc.update(logits[s:s + 70], labels[s:s + 70])
  assert acc.ece() == pytest.approx(want, abs=1e-4)
  # Padding rows (valid False) do not count.
  padded = metrics.calibration_sums(np.concatenate([logits, logits[:5]]),
                                     np.concatenate([labels, labels[:5]]),
                                     np.arange(305) < 300)
  assert metrics.expected_calibration_error(padded) == pytest.approx(want, abs=1e-4)


# ------------------------------------------------------------------------------------------------
# End to end on 8 simulated devices.


def tiny_config(data_dir: str, **train):
  """The demo recipe on 64 training images: 4 steps of 16 per epoch, 2 epochs."""
  c = retrain_config.get_config("demo")
  c.data.data_dir = data_dir
  c.data.train_split = "train[:64]"
  c.data.eval_split = "test"
  c.train.batch_size = 16
  c.train.epochs = 2
  c.train.warmup_epochs = 1.0
  c.train.checkpoint_every_steps = 1
  c.train.log_every_steps = 2
  c.eval.batch_size = 16
  for k, v in train.items():
    c.train[k] = v
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return prepare_data(str(tmp_path_factory.mktemp("retrain_data")))


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
  assert jax.device_count() == 8
  workdir = str(tmp_path_factory.mktemp("retrain_full"))
  config = tiny_config(data_dir, ema_decay=0.5, checkpoint_every_steps=100)
  results = retrain_loop.train_and_evaluate(config, workdir)
  return workdir, results


def test_retrain_trains_evaluates_checkpoints_and_exports(full_run, data_dir):
  workdir, results = full_run
  for name in ("raw", "ema"):
    r = results[name]
    assert r["count"] == 16 and 0 <= r["top1"] <= r["top5"] <= 100 and 0 <= r["ece"] <= 100
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["best"] == results["best"]
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert sum("eval/ema/top1" in r for r in rows) == 2  # Evaluated after each epoch.
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
  assert glob.glob(os.path.join(workdir, "tb", "events.out.tfevents.*"))
  # The export and the workdir itself evaluate to the loop's own figures (same preprocessing).
  for target, ema in ((os.path.join(workdir, "bossnet_ema"), False), (workdir, True)):
    got = evaluate.evaluate(target, name=embedded.NAME, split="test", data_dir=data_dir,
                            resolution=32, batch_size=8, ema=ema)
    assert got["top1"] == pytest.approx(results["ema"]["top1"])
    assert got["ece"] == pytest.approx(results["ema"]["ece"], abs=1e-3)
  out = subprocess.run(
      [sys.executable, "launch/evaluate.py", f"--checkpoint={workdir}/bossnet_raw",
       f"--data_dir={data_dir}", f"--name={embedded.NAME}", "--split=test", "--resolution=32"],
      capture_output=True, text=True, timeout=300,
      env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"top-1 {results['raw']['top1']:.2f}%" in out.stdout and "ECE" in out.stdout


def test_resume_after_a_kill_and_a_corrupt_checkpoint_equals_the_uninterrupted_run(
    full_run, data_dir, tmp_path):
  workdir, results = full_run
  config = tiny_config(data_dir, ema_decay=0.5, checkpoint_every_steps=2)
  part = str(tmp_path / "part")
  assert retrain_loop.train_and_evaluate(config, part, stop_after_steps=6) == \
      {"stopped_at_step": 6}
  directory = checkpoints.checkpoint_dir(part)
  assert checkpoint_io.all_steps(directory) == [2, 4, 6]
  # Flip a byte in the newest step's largest file: Orbax would restore it silently; the run must
  # fall back to step 4 and still end exactly where the uninterrupted run ended.
  found = [f for f in glob.glob(os.path.join(directory, "6", "**", "*"), recursive=True)
           if os.path.isfile(f) and "bossnas_files" not in f]
  victim = max(found, key=os.path.getsize)
  with open(victim, "r+b") as f:
    f.seek(os.path.getsize(victim) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))
  resumed = retrain_loop.train_and_evaluate(config, part)
  assert resumed == results
  run = retrain_loop.Run(config, part)
  a, meta_a, _ = checkpoints.restore(workdir, run.model, run.tx, run.resolution)
  b, meta_b, _ = checkpoints.restore(part, run.model, run.tx, run.resolution)
  assert_trees_equal(a, b)
  assert meta_a["history"] == meta_b["history"]
  assert glob.glob(directory + ".corrupt/6-*")


def test_bad_inputs_fail_with_clear_errors(data_dir, tmp_path):
  c = tiny_config(data_dir)
  c.model.arch = "bossnet_t9"
  with pytest.raises(errors.ConfigError, match="bossnet_t9.*named model"):
    retrain_loop.Run(c, str(tmp_path))
  c = tiny_config(data_dir)
  c.model.arch = "5433-3230-0010-9999"
  with pytest.raises(errors.ConfigError, match="5433-3230-0010-9999"):
    retrain_loop.Run(c, str(tmp_path))
  c = tiny_config(data_dir)
  c.model.resolution = 48
  with pytest.raises(errors.ConfigError, match="multiple of 32"):
    retrain_loop.Run(c, str(tmp_path))
  c = tiny_config(data_dir, batch_size=12)
  with pytest.raises(ValueError, match="train.batch_size=12 does not split evenly over 8"):
    retrain_loop.Run(c, str(tmp_path))
  c = tiny_config(data_dir, warmup_epochs=2.0)
  with pytest.raises(errors.ConfigError, match="warmup_epochs"):
    retrain_loop.Run(c, str(tmp_path))
  c = tiny_config(data_dir)
  c.model.arch = str(tmp_path / "missing" / "architecture.json")
  with pytest.raises(ValueError, match="does not exist"):
    retrain_loop.Run(c, str(tmp_path))
  (tmp_path / "file").write_text("")
  with pytest.raises(files.WorkdirError, match="is a file; pass a folder"):
    retrain_loop.train_and_evaluate(tiny_config(data_dir), str(tmp_path / "file"))


def test_the_8_device_step_is_the_mean_of_per_device_gradients_with_per_device_bn(data_dir):
  """One sharded step equals, per device: its own key, its batch augmentation and drop-path, BN
  over its own 2 images and the gradient of its loss; then the mean gradient through AdamW,
  running statistics averaged over devices, and the EMA of both. A 4-block BossNet (ResConv,
  ResConv, ResConv + ResAtt, ResAtt) keeps the two compiles short."""
  c = tiny_config(data_dir, ema_decay=0.5)
  run = retrain_loop.Run(c, data_dir)  # The workdir is not touched by Run().
  model = bossnet.BossNet(run.network.replace(encoding=((1,), (1,), (1, 0), (0,))))
  tx = run.tx
  programs = step_lib.Programs(model, tx, run.mesh, c.augment, 10, 0.5)
  s0 = jax.device_get(state_lib.init_state(model, tx, run.init_key, 32))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 32, 32, 3), np.uint8)
  labels = rng.integers(0, 10, 16).astype(np.int32)
  # A host copy goes in: the step donates its input state.
  s1, metrics = programs.train_step(
      parallel.replicate(s0, run.mesh), parallel.host_batch_to_global(images, run.mesh),
      parallel.host_batch_to_global(labels, run.mesh), run.step_key)

  @jax.jit
  def device_grad(params, stats, x, y, j):
    mix_key, drop_key = jax.random.split(step_lib.step_key(run.step_key, 0, j))
    x, targets = mixing.train_inputs(mix_key, x, y, c.augment, 10)

    def loss_fn(p):
      logits, new = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                mutable=["batch_stats"], rngs={"dropout": drop_key})
      return step_lib.soft_target_cross_entropy(logits, targets), new

    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  outs = [device_grad(s0.params, s0.batch_stats, images[2 * j:2 * j + 2],
                      labels[2 * j:2 * j + 2], j) for j in range(8)]
  grads = jax.tree.map(lambda *g: sum(g) / 8, *[g for _, g in outs])
  stats = jax.tree.map(lambda *v: sum(v) / 8, *[new["batch_stats"] for (_, new), _ in outs])
  updates, _ = tx.update(grads, s0.opt_state, s0.params)
  params = optax.apply_updates(s0.params, updates)
  assert float(metrics["loss"]) == pytest.approx(np.mean([float(v) for (v, _), _ in outs]),
                                                 rel=1e-5)
  close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                                  atol=1e-6)
  jax.tree.map(close, jax.device_get(s1.params), params)
  jax.tree.map(close, jax.device_get(s1.batch_stats), stats)
  ema = lambda e, x: 0.5 * e + 0.5 * x
  jax.tree.map(close, jax.device_get(s1.ema_params), jax.tree.map(ema, s0.ema_params, params))
  jax.tree.map(close, jax.device_get(s1.ema_batch_stats),
               jax.tree.map(ema, s0.ema_batch_stats, stats))


def test_retraining_in_a_bucket_resumes_and_evaluates_from_there(full_run, data_dir, bucket_dir):
  """A gs:// retraining workdir (an emulated bucket): killed after step 5 and resumed, it ends
  with the uninterrupted run's results; its exports evaluate straight from the bucket."""
  _, results = full_run
  config = tiny_config(data_dir, ema_decay=0.5, checkpoint_every_steps=4)
  assert retrain_loop.train_and_evaluate(config, bucket_dir, stop_after_steps=5) == \
      {"stopped_at_step": 5}
  assert checkpoint_io.all_steps(checkpoints.checkpoint_dir(bucket_dir)) == [4, 5]
  assert retrain_loop.train_and_evaluate(config, bucket_dir) == results
  assert files.read_json(os.path.join(bucket_dir, "results.json"))["best"] == results["best"]
  rows = files.read_text(os.path.join(bucket_dir, "metrics.jsonl")).splitlines()
  assert sum("eval/ema/top1" in r for r in rows) == 2
  for target, ema in ((f"{bucket_dir}/bossnet_ema", False), (bucket_dir, True)):
    got = evaluate.evaluate(target, name=embedded.NAME, split="test", data_dir=data_dir,
                            resolution=32, batch_size=8, ema=ema)
    assert got["top1"] == pytest.approx(results["ema"]["top1"])
