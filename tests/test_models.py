"""The Flax supernet: shapes of every op case, path sub-trees, gradients, heads, loss, sizes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bossnas_jax import search_space as ss
from bossnas_jax.models import heads, summary, supernet
from bossnas_jax.models.layers import MHSA
from configs import hytra

TINY = ss.Dims(1 / 16, 64, 8)  # Channels 128/64/32/16, scales 2/4/8/16, heads 4/2.
KEY = jax.random.key(0, impl="rbg")


def _shape(dims, d, c, batch=2):
  return jax.ShapeDtypeStruct((batch, dims.fmap(d), dims.fmap(d), c), jnp.float32)


@pytest.mark.parametrize("op", range(ss.NUM_OPS))
def test_op_shapes_every_entry(op):
  """Same-scale and one-finer input for every op; block 0 layer 0 gets the adapter's width."""
  d = ss.op_scale(op)
  module = supernet.make_op(TINY, op, "op")
  cases = [TINY.channels(d), TINY.width(d)]  # Same scale; block 0 layer 0 (after the adapter).
  for c in cases:
    v = jax.eval_shape(functools.partial(module.init, down=False, train=True), KEY,
                       _shape(TINY, d, c))
    y = jax.eval_shape(functools.partial(module.apply, down=False, train=False), v,
                       _shape(TINY, d, c))
    assert y.shape == (2, TINY.fmap(d), TINY.fmap(d), TINY.channels(d))
    # A projection shortcut exists exactly when the input width differs.
    assert ("shortcut_conv" in v["params"]) == (c != TINY.channels(d))
  if d < 3:
    x = _shape(TINY, d + 1, TINY.channels(d + 1))
    v = jax.eval_shape(functools.partial(module.init, down=True, train=True), KEY, x)
    y = jax.eval_shape(functools.partial(module.apply, down=True, train=False), v, x)
    assert y.shape == (2, TINY.fmap(d), TINY.fmap(d), TINY.channels(d))
    assert {k for k in v["params"] if k.endswith("_d")}, "down entry has its own modules"


@pytest.mark.parametrize("d", range(4))
def test_stem_adapters(d):
  img = jax.ShapeDtypeStruct((2, TINY.resolution, TINY.resolution, 3), jnp.float32)
  stem = supernet.Stem(TINY)
  v = jax.eval_shape(functools.partial(stem.init, train=True), KEY, img)
  x = jax.eval_shape(functools.partial(stem.apply, train=False), v, img)
  assert x.shape == (2, TINY.fmap(3), TINY.fmap(3), TINY.stem_channels)
  adapter = supernet.StemAdapter(TINY, d)
  v = jax.eval_shape(functools.partial(adapter.init, train=True), KEY, x)
  y = jax.eval_shape(functools.partial(adapter.apply, train=False), v, x)
  assert y.shape == (2, TINY.fmap(d), TINY.fmap(d), TINY.width(d))


def test_every_candidate_path_has_its_variables_and_output_scale():
  """Every (block, input scale, path) applies with its sub-tree alone and ends at its scale."""
  for b in range(ss.NUM_BLOCKS):
    full = jax.eval_shape(lambda k, b=b: supernet.init_block(TINY, b, k), KEY)
    module = supernet.SupernetBlock(TINY, b)
    for s, path in ss.all_candidates(b)[::7]:
      sub = supernet.path_variables(full, TINY, b, s, path)
      x = jax.ShapeDtypeStruct(supernet.block_input_shape(TINY, b, s, 2), jnp.float32)
      y, _ = jax.eval_shape(
          functools.partial(module.apply, path=path, in_scale=s, train=True,
                            mutable=["batch_stats"]), sub, x)
      d = ss.output_scale(path)
      assert y.shape == (2, TINY.fmap(d), TINY.fmap(d), TINY.channels(d))
      # Shapes of the sub-tree agree with the whole block's.
      jax.tree.map(lambda a, b: None if a.shape == b.shape else pytest.fail("shape"),
                   sub, supernet.path_variables(full, TINY, b, s, path))


def test_down_and_same_entries_share_the_trunk():
  dims = TINY
  both = supernet._init_op(dims, 2, dims.channels(1), True, KEY)
  same = supernet._init_op(dims, 2, dims.channels(1), False, KEY)
  for k in same["params"]:
    jax.tree.map(np.testing.assert_array_equal, both["params"][k], same["params"][k])
  assert set(both["params"]) - set(same["params"]) == {
      "proj_conv_d", "proj_peg_d", "proj_bn_d", "shortcut_conv_d", "shortcut_bn_d"}


def test_init_matches_the_official_recipe():
  v = supernet.init_block(TINY, 1, KEY)["params"]
  np.testing.assert_array_equal(v["layer2_op3"]["bn3"]["scale"], 0.0)  # ResConv bn3: γ = 0.
  np.testing.assert_array_equal(v["layer2_op0"]["out_bn"]["scale"], 0.0)  # ResAtt net[-1].
  np.testing.assert_array_equal(v["layer2_op3"]["bn2"]["scale"], 1.0)
  # PyTorch's default conv init: U(±1/sqrt(fan_in)).
  k = np.asarray(v["layer1_op1"]["conv2"]["kernel"])
  bound = 1 / np.sqrt(9 * k.shape[2])
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound


def _loss_fn(dims, block, in_scale, path, proj, pred):
  module = supernet.SupernetBlock(dims, block)

  def loss(block_vars, head_vars, x, target):
    y, _ = module.apply(block_vars, x, path=path, in_scale=in_scale, train=True,
                        mutable=["batch_stats"])
    z, _ = proj.apply(head_vars["proj"], y, train=True, mutable=["batch_stats"])
    p, _ = pred.apply(head_vars["pred"], z, train=True, mutable=["batch_stats"])
    return heads.regression_loss(p, target)

  return loss


def test_gradient_touches_only_the_path():
  """Grad w.r.t. the whole block: zero off the path; the sub-tree grad equals it on the path."""
  dims, b, s, path = TINY, 1, 1, (3, 2, 1, 0)
  full = supernet.init_block(dims, b, KEY)
  # Non-zero BN γ everywhere, so that every path parameter receives gradient.
  full["params"] = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.full_like(x, 0.5) if p[-1].key == "scale" else x, full["params"])
  proj = heads.Projector(dims, 32, 16)
  pred = heads.Predictor(32, 16)
  pv = proj.init(KEY, proj.init_inputs(), train=True, method=heads.Projector.call_all)
  qv = pred.init(KEY, jnp.zeros((1, 16)), train=True)
  hv = {"proj": pv, "pred": qv}
  x = jax.random.normal(jax.random.key(1), supernet.block_input_shape(dims, b, s, 4))
  t = jax.random.normal(jax.random.key(2), (4, 16))
  loss = jax.jit(_loss_fn(dims, b, s, path, proj, pred))
  g_full, g_head = jax.grad(loss, argnums=(0, 1))(full, hv, x, t)
  sub = supernet.path_variables(full, dims, b, s, path)
  g_sub = jax.grad(loss)(sub, hv, x, t)
  used = {op for op in sub["params"]}
  assert used == {"layer0_op3", "layer1_op2", "layer2_op1", "layer3_op0"}
  for name, g in g_full["params"].items():
    norm = sum(float(jnp.abs(a).sum()) for a in jax.tree.leaves(g))
    if name in used:
      sub_g = g_sub["params"][name]
      for k, leaf in g.items():
        if k in sub_g:
          jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                       leaf, sub_g[k])
          assert all(float(jnp.abs(a).sum()) > 0 for a in jax.tree.leaves(leaf)), (name, k)
        else:
          assert sum(float(jnp.abs(a).sum()) for a in jax.tree.leaves(leaf)) == 0, (name, k)
    else:
      assert norm == 0, name
  # The neck uses only the adapter of the path's output scale (7x7: none); predictor gets grads.
  assert all(float(jnp.abs(a).sum()) == 0
             for k, v in g_head["proj"]["params"].items() if k.startswith("fix")
             for a in jax.tree.leaves(v))
  assert float(jnp.abs(g_head["pred"]["params"]["fc0"]["kernel"]).sum()) > 0


def test_loss_range_and_alignment():
  p = jax.random.normal(jax.random.key(3), (64, 16))
  t = jax.random.normal(jax.random.key(4), (64, 16))
  loss = float(heads.regression_loss(p, t))
  assert -2.0 <= loss <= 2.0
  assert float(heads.regression_loss(p, 3.0 * p)) == pytest.approx(-2.0, abs=1e-6)
  assert float(heads.regression_loss(p, -p)) == pytest.approx(2.0, abs=1e-6)
  # The target carries no gradient.
  assert float(jnp.abs(jax.grad(lambda t: heads.regression_loss(p, t))(t)).sum()) == 0


def test_attention_is_standard_and_head_major():
  """docs/method.md#d4: out = softmax(q kᵀ / sqrt(dh)) v with the official head-major qkv channel
  layout."""
  heads_, dh, c = 2, 4, 8
  x = jax.random.normal(jax.random.key(5), (1, 3, 3, c))
  m = MHSA(heads_, dh)
  v = m.init(KEY, x)
  out = np.asarray(m.apply(v, x)).reshape(9, heads_ * dh)
  w = np.asarray(v["params"]["qkv"]["kernel"])
  qkv = np.asarray(x).reshape(9, c) @ w
  for h in range(heads_):
    q = qkv[:, h * dh:(h + 1) * dh]
    k = qkv[:, heads_ * dh + h * dh:heads_ * dh + (h + 1) * dh]
    val = qkv[:, 2 * heads_ * dh + h * dh:2 * heads_ * dh + (h + 1) * dh]
    logits = q @ k.T / np.sqrt(dh)
    a = np.exp(logits - logits.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    np.testing.assert_allclose(out[:, h * dh:(h + 1) * dh], a @ val, rtol=1e-4, atol=1e-5)


def test_projector_scales():
  proj = heads.Projector(TINY, 32, 16)
  v = jax.eval_shape(
      lambda k: proj.init(k, proj.init_inputs(), train=True, method=heads.Projector.call_all), KEY)
  assert {k for k in v["params"] if k.startswith("fix")} == {
      f"fix{n}_{m}" for n in ("14", "28", "56") for m in ("dw", "proj", "bn")}
  for x in proj.init_inputs():
    y, _ = jax.eval_shape(functools.partial(proj.apply, train=True, mutable=["batch_stats"]),
                          v, x)
    assert y.shape == (1, 16)


def test_full_size_parameter_counts():
  """docs/method.md#figures, by jax.eval_shape: nothing is allocated."""
  config = hytra.get_config()
  dims = summary.dims_from_config(config)
  built = sum(summary.block_params(dims, b) for b in range(4))
  assert built + summary.unused_down_params(dims) == 854_265_344
  want = {0: 22_303_744, 1: 23_876_608, 2: 5_581_312, 3: 5_974_528, 4: 1_496_320, 5: 71_040}
  for op, n in want.items():
    d = ss.op_scale(op)
    assert summary.op_params(dims, op, dims.channels(d), ss.has_down_branch(0, 1, d)) == n
  assert summary.neck_params(config) == (13_160_704, 3_710_976, 2_109_696)


def test_cpu_layer_forms_under_shard_map_equal_the_plain_ones(monkeypatch):
  """The CPU forms of layers.py (custom-gradient 1x1 convs and max pool, tap-wise depthwise
  convs, im2col 3x3/s2) inside shard_map over 8 devices with its type checks on, the views
  vmapped as the training step does: outputs and gradients (replicated kernels: summed over
  devices) equal those of the plain lax/Flax forms."""
  import flax.linen as nn
  from jax import lax

  from bossnas_jax.infra import parallel
  from bossnas_jax.models import layers

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = layers.conv(8, 7, 2, 3, "stem", None)(x)
      x = layers.max_pool(x, 3, 2, 1)
      x = layers.conv1x1(16, "pw", None)(x)
      x = layers.peg(16, 2, "peg", None)(x)
      x = layers.conv(24, 3, 2, 1, "down", None)(nn.relu(x))
      x = layers.patchify(24, 2, "patch", None)(x)
      # On the 1x1 map left: the centre-tap forms of a 3x3 conv (stride 1 and 2) and of a PEG.
      x = layers.conv(24, 3, 1, 1, "tap", None)(x)
      x = layers.peg(24, 1, "tap_peg", None)(x)
      return layers.conv(32, 3, 2, 1, "tap_down", None)(x)

  n = 8
  mesh = jax.make_mesh((n,), (parallel.AXIS,), devices=jax.devices()[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))
  P = jax.sharding.PartitionSpec
  x = jax.random.normal(jax.random.key(1), (2 * n, 2, 32, 32, 3))
  variables = Net().init(KEY, x[:2, 0])

  def per_device(v, x):
    def loss(v, x):
      y = jax.vmap(lambda xv: Net().apply(v, xv), in_axes=1, out_axes=1)(x)
      return jnp.sum(jnp.sin(y)), y
    (_, y), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(v, x)
    return y, g

  def run():
    fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.AXIS)),
                       out_specs=(P(parallel.AXIS), (P(), P(parallel.AXIS))))
    return jax.jit(fn)(variables, x)

  fast = run()
  with monkeypatch.context() as m:
    m.setattr(layers, "cpu_conv", lax.conv_general_dilated)
    m.setattr(layers, "cpu_dense_dot", lax.dot_general)
    m.setattr(layers, "max_pool", lambda x, w, s, p: nn.max_pool(x, (w, w), (s, s),
                                                                   ((p, p), (p, p))))
    plain = run()
  assert jax.tree.structure(fast) == jax.tree.structure(plain)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5 * float(jnp.max(jnp.abs(b))))


def test_a_conv_of_a_1x1_map_is_its_centre_tap_without_a_reversed_kernel_copy():
  """XLA:CPU lowers a 3x3 conv of a 1x1 map (pad 1) to a conv of the kernel reversed in memory at
  every call; layers.cpu_conv uses the centre tap instead (docs/results.md#latency): same values
  and gradients, and no `reverse` left in the compiled program."""
  from jax import lax

  from bossnas_jax.models import layers

  x = jax.random.normal(KEY, (2, 1, 1, 16))
  k = jax.random.normal(jax.random.key(3), (3, 3, 16, 24))
  dn = lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))
  for stride in (1, 2):
    def f(conv, x, k, stride=stride):
      return jnp.sum(jnp.sin(conv(x, k, (stride, stride), ((1, 1), (1, 1)),
                                  dimension_numbers=dn)))
    got = jax.value_and_grad(functools.partial(f, layers.cpu_conv), argnums=(0, 1))(x, k)
    want = jax.value_and_grad(functools.partial(f, lax.conv_general_dilated),
                              argnums=(0, 1))(x, k)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  hlo = jax.jit(lambda x, k: layers.cpu_conv(x, k, (1, 1), ((1, 1), (1, 1)),
                                             dimension_numbers=dn)).lower(x, k).compile()
  assert " reverse(" not in hlo.as_text()
