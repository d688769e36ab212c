"""BossNet: construction from names / architectures / encodings, forward passes, init, helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bossnas_jax import search_space as ss
from bossnas_jax.data import normalize
from bossnas_jax.models import bossnet
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.retrain import metrics

T0 = ((1,), (1,), (1, 1, 1, 0, 1), (0, 0, 0, 1, 0, 0, 0, 0, 0))


def random_variables(model, resolution=64, seed=0):
  """Random variables of the right shapes without compiling an initialiser (slow on XLA:CPU)."""
  rng = np.random.default_rng(seed)
  shapes = bossnet.variable_shapes(model, resolution)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32) * 0.1, shapes["params"])
  stats = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32),
                       shapes["batch_stats"])
  return {"params": params, "batch_stats": stats}


def test_named_models_and_aliases():
  t0, nose, t1 = (bs.named_config(n) for n in ("bossnet_t0", "bossnet_t0_nose", "bossnet_t1"))
  assert t0.encoding == nose.encoding == t1.encoding == T0
  assert (t0.act, t0.se, t0.last_stride) == ("silu", True, 2)
  assert (nose.act, nose.se, nose.last_stride) == ("relu", False, 2)
  assert (t1.act, t1.se, t1.last_stride) == ("silu", True, 1)
  assert bs.named_config("T0") == t0
  assert bs.named_config("BossNet_T0-nose") == nose
  assert bs.resolve_config(ss.BOSSNET_T0) == bs.BossNetConfig(T0, empty_stage_stride="stage")
  assert bs.layout(bs.resolve_config(ss.BOSSNET_T0)) == bs.layout(bs.BossNetConfig(T0))
  assert bs.BossNetConfig.from_dict(t1.to_dict()) == t1


def test_encoding_conversions():
  assert bs.encoding_from_architecture(ss.BOSSNET_T0) == T0
  assert bs.encoding_from_architecture("5433323000100000") == T0
  assert bs.encoding_from_architecture("4420-1100-0000-0000") == (
      (), (1, 1), (0,), (0, 1, 1, 0, 0) + (0,) * 8)
  specs = bs.layout(bs.config_from_architecture("4420-1100-0000-0000",
                                                empty_stage_stride="official"))
  assert (specs[0].kind, specs[0].stride, specs[0].out_channels) == ("empty", 2, 256)
  assert sum(s.kind != "empty" for s in specs) == 16
  staged = bs.layout(bs.config_from_architecture("4420-1100-0000-0000", empty_stage_stride="stage"))
  assert staged[0].stride == 1 and staged[1:] == specs[1:]


def test_clear_errors():
  with pytest.raises(bs.BossNetSpecError, match="unknown BossNet model"):
    bs.named_config("bossnet_t2")
  with pytest.raises(bs.BossNetSpecError, match="expected 4 paths"):
    bs.resolve_config("5433-3230")
  with pytest.raises(bs.BossNetSpecError, match="position 1"):
    bs.resolve_config("5433-5230-0010-0000")
  with pytest.raises(bs.BossNetSpecError, match="4 stages"):
    bs.BossNetConfig(((1,), (2,), (), ()))
  with pytest.raises(bs.BossNetSpecError, match="4 stages"):
    bs.BossNetConfig(((1,), (1,)))
  with pytest.raises(bs.BossNetSpecError, match="multiple of 32"):
    bs.check_resolution(100)
  model = bossnet.build("bossnet_t0")
  with pytest.raises(bs.BossNetSpecError, match="multiple of 32"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 100, 100, 3))))


def test_layout_strides_shortcuts_drop_path():
  specs = bs.layout(bs.named_config("bossnet_t0", drop_path_rate=0.1))
  assert [s.name for s in specs][:4] == ["layer1_0", "layer2_0", "layer3_0", "layer3_1"]
  first = {s.stage: s for s in specs if s.index == 0}
  assert [first[i].stride for i in range(4)] == [1, 2, 2, 2]
  assert all(s.shortcut for s in first.values())
  assert not any(s.shortcut for s in specs if s.index)
  for idx, s in enumerate(specs):
    assert s.drop_path == pytest.approx(0.1 * idx / 15 if s.kind == "conv" else 0.0)
    assert s.se == (s.kind == "conv")
  t1 = {s.name: s for s in bs.layout(bs.named_config("bossnet_t1"))}
  assert t1["layer4_0"].stride == 1 and t1["layer4_0"].shortcut  # 1024 -> 2048, no pool
  assert [s.heads for s in specs if s.kind == "att"] == [4] + [8] * 8


@pytest.mark.parametrize("name,side", [("bossnet_t0", 2), ("bossnet_t0_nose", 2),
                                       ("bossnet_t1", 4)])
def test_forward_named_models(name, side):
  model = bossnet.build(name)
  variables = random_variables(model, 64)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 64, 64, 3)), jnp.float32)
  logits = bossnet.eval_logits(model, variables, x)
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  feats = jax.eval_shape(lambda: model.apply(variables, x, features_only=True))
  assert feats.shape == (2, side, side, 2048)


def test_avg_pool_ceil_matches_pytorch_rule():
  x = np.arange(2 * 7 * 5 * 3, dtype=np.float32).reshape(2, 7, 5, 3)
  got = np.asarray(bossnet.avg_pool_ceil(jnp.asarray(x), 2))
  assert got.shape == (2, 4, 3, 3)
  want = np.zeros_like(got)
  for i in range(4):
    for j in range(3):
      want[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  even = jnp.ones((1, 8, 8, 2))
  np.testing.assert_allclose(bossnet.avg_pool_ceil(even, 2), jnp.ones((1, 4, 4, 2)))


def test_drop_path_per_sample():
  x = jnp.ones((64, 2, 2, 3))
  y = np.asarray(bossnet.drop_path(x, 0.25, jax.random.key(0)))
  per = y.reshape(64, -1)
  assert set(np.unique(per).tolist()) <= {0.0, float(np.float32(1 / 0.75))}
  assert np.all(per.min(axis=1) == per.max(axis=1))  # one decision per sample
  assert 0 < (per[:, 0] == 0).sum() < 64


def test_train_mode_updates_stats_and_uses_dropout_rng():
  cfg = bs.BossNetConfig(((1, 1), (), (), (0,)), width_multiplier=0.125, dim_head=16,
                         num_classes=10, drop_path_rate=0.5)
  model = bossnet.BossNet(cfg)
  variables = random_variables(model, 64)
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 64, 64, 3)), jnp.float32)
  step = jax.jit(lambda v, x, k: model.apply(v, x, train=True, mutable=["batch_stats"],
                                             rngs={"dropout": k}))
  out, upd = step(variables, x, jax.random.key(1))
  assert out.shape == (4, 10)
  before = variables["batch_stats"]["layer1_0"]["bn1"]["mean"]
  assert not np.allclose(upd["batch_stats"]["layer1_0"]["bn1"]["mean"], before)
  # Differentiable end to end, the ceil-mode pool of layer4_0's shortcut included.
  loss = jax.jit(jax.grad(lambda p, x: jnp.sum(step({**variables, "params": p}, x,
                                                    jax.random.key(1))[0] ** 2)))
  grads = loss(variables["params"], x)
  assert float(jnp.abs(grads["layer4_0"]["shortcut_conv"]["kernel"]).sum()) > 0


def test_init_follows_the_official_scheme():
  cfg = bs.BossNetConfig(((1,), (), (), (0,)), width_multiplier=0.125, dim_head=16,
                         num_classes=10)
  model = bossnet.BossNet(cfg)
  v = bossnet.init_variables(model, jax.random.key(0, impl="rbg"), 64)
  p = v["params"]
  assert np.all(np.asarray(p["layer1_0"]["bn3"]["scale"]) == 0)
  assert np.all(np.asarray(p["layer4_0"]["out_bn"]["scale"]) == 0)
  assert np.all(np.asarray(p["layer1_0"]["bn1"]["scale"]) == 1)
  assert np.all(np.asarray(p["layer2_0"]["bn"]["scale"]) == 1)
  assert np.all(np.asarray(p["bn1"]["bias"]) == 0)
  # kaiming normal, fan_out: std sqrt(2 / (k·k·out)).
  k = np.asarray(p["layer2_0"]["conv"]["kernel"])  # 3x3, 32 -> 64
  assert k.std() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.1)
  qkv = np.asarray(p["layer4_0"]["attn"]["qkv"]["kernel"])  # 1x1, 64 -> 192
  assert qkv.std() == pytest.approx((2 / 192) ** 0.5, rel=0.1)
  # PEG bias: PyTorch's default U(±1/3) (fan_in 9).
  assert np.abs(np.asarray(p["layer1_0"]["peg"]["bias"])).max() <= 1 / 3
  assert "se_fc1" in p["layer1_0"] and "se_fc1" not in p["layer4_0"]
  assert np.all(np.asarray(v["batch_stats"]["bn1"]["var"]) == 1)


def test_topk_helpers():
  logits = jnp.asarray([[0.1, 0.9, 0.0, 0.2, 0.3, 0.4, 0.5],
                        [0.9, 0.1, 0.0, 0.2, 0.3, 0.4, 0.5],
                        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
  labels = jnp.asarray([1, 6, 0])
  got = metrics.topk_correct(logits, labels)
  assert (int(got[1]), int(got[5])) == (1, 2)
  acc = metrics.TopKAccumulator()
  acc.update(logits, labels)
  acc.update(logits[:1], jnp.asarray([3]), valid=jnp.asarray([False]))
  res = acc.result()
  assert res["count"] == 3
  assert res["top1"] == pytest.approx(100 / 3) and res["top5"] == pytest.approx(200 / 3)
  x = normalize.normalize_images(np.full((1, 2, 2, 3), 255, np.uint8))
  np.testing.assert_allclose(x[0, 0, 0], (1 - np.array(normalize.IMAGENET_MEAN))
                             / np.array(normalize.IMAGENET_STD), rtol=1e-6)
