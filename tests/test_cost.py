"""The analytic cost model against docs/method.md#figures and against the Flax models' parameter
trees."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bossnas_jax import search_space as ss
from bossnas_jax.models import bossnet, cost, cost_report, heads, supernet
from bossnas_jax.models import bossnet_spec as bs

# docs/method.md#figures, #cost: (model, resolution, official MAdds, official params, true params).
OFFICIAL_ROWS = [
    ("bossnet_t0_nose", 224, 3_441_888_768, 37_231_232, 37_319_080),
    ("bossnet_t0", 224, 3_447_303_680, 42_646_144, 38_415_960),
    ("bossnet_t0", 288, 5_736_197_632, 42_646_144, 38_415_960),
    ("bossnet_t1", 224, 7_948_768_256, 42_646_144, 38_415_960),
    ("bossnet_t1", 256, 10_513_473_536, 42_646_144, 38_415_960),
]
# True-convention MAdds: the counter's arithmetic with SE only on ResConv, which
# docs/method.md#cost quotes as 3.443G / 5.732G / 7.944G / 10.509G (T0-nose has no SE, so it
# equals the counter).
TRUE_MADDS = [3_441_888_768, 3_442_978_304, 5_731_872_256, 7_944_442_880, 10_509_148_160]

TINY = ss.Dims(1 / 16, 64, 16)


def _n(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("row,true_madds", list(zip(OFFICIAL_ROWS, TRUE_MADDS)))
def test_bossnet_rows_both_conventions(row, true_madds):
  model, res, madds, params, real = row
  off = cost.bossnet_cost(model, res, "official")
  assert (off.madds, off.params) == (madds, params)
  tru = cost.bossnet_cost(model, res)
  assert tru.params == real
  assert tru.madds == true_madds
  assert tru.flops == 2 * true_madds


def test_architecture_string_matches_named_model():
  assert cost.architecture_cost(ss.BOSSNET_T0) == cost.bossnet_cost("bossnet_t0")
  assert cost.architecture_cost(ss.BOSSNET_T0, se=False, act="relu", convention="official") \
      == cost.bossnet_cost("bossnet_t0_nose", convention="official")


@pytest.mark.parametrize("model", ["bossnet_t0", "bossnet_t0_nose", "bossnet_t1",
                                   "4420-1100-0000-0000", "5433-3231-1111-1111"])
def test_true_params_equal_flax_module_by_module(model):
  net = bossnet.build(model)
  params = bossnet.variable_shapes(net, 64)["params"]
  assert bossnet.count_params(params) == cost.bossnet_cost(model).params
  per_module = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [p.key for p in path]
    key = "/".join(names[:2]) if names[0].startswith("layer") else names[0]
    per_module[key] = per_module.get(key, 0) + int(np.prod(leaf.shape))
  parts = {k: c.params for k, c in cost.bossnet_parts(model).items() if c.params}
  assert per_module == parts


def test_official_counter_empty_stage_and_odd_sizes():
  # An empty stage: the counter's 9·planes² at the nominal stride; the real conv in->4p.
  cfg = bs.config_from_architecture("4420-1100-0000-0000", empty_stage_stride="official")
  off = cost.bossnet_parts(cfg, 224, "official")["layer1_0"]
  assert off == cost.Cost(56 * 56 * 9 * 64 * 64, 9 * 64 * 64)
  tru = cost.bossnet_parts(cfg, 224)
  assert tru["layer1_0/conv"] == cost.Cost(28 * 28 * 9 * 64 * 256, 9 * 64 * 256)
  # stage 4 starts from an odd 7x7 map: PEG and ceil-mode pool give 4x4.
  assert tru["layer4_0/attn"].madds == 3 * 512 * 512 * 16 + 2 * 512 * 16 * 16
  assert bs.avg_pool_ceil_out(7, 2) == 4 and bs.avg_pool_ceil_out(8, 2) == 4
  # With the stage's own stride, the empty stage 1 keeps 56x56 and stage 4 runs at 7x7.
  staged = cost.bossnet_parts(cfg.replace(empty_stage_stride="stage"), 224)
  assert staged["layer1_0/conv"] == cost.Cost(56 * 56 * 9 * 64 * 256, 9 * 64 * 256)
  assert staged["layer4_0/attn"].madds == 3 * 512 * 512 * 49 + 2 * 512 * 49 * 49
  assert bs.avg_pool_ceil_out(5, 1, 1) == 5


def test_bad_inputs():
  with pytest.raises(ValueError, match="convention"):
    cost.bossnet_cost("bossnet_t0", 224, "paper")
  with pytest.raises(bs.BossNetSpecError, match="multiple of 32"):
    cost.bossnet_cost("bossnet_t0", 200)
  with pytest.raises(bs.BossNetSpecError, match="unknown BossNet model"):
    cost.bossnet_cost("bossnet_t9")


# ------------------------------------------------------------------------------------------------
# The supernet.


def test_supernet_official_figures():
  dims = ss.Dims()
  assert cost.supernet_params(dims, "official") == 854_265_344
  want = {0: 22_303_744, 1: 23_876_608, 2: 5_581_312, 3: 5_974_528, 4: 1_496_320, 5: 71_040}
  assert {o: cost.op_params(dims, 0, 1, o) for o in ss.ops_in_block(0)} == want
  # Block 1: the same for ops 0-3; op 4 (28x28) has no down-scale branch there.
  assert all(cost.op_params(dims, 1, 2, o) == want[o] for o in range(4))
  assert cost.op_params(dims, 1, 1, 4) == cost.op_cost(dims, 1, 1, 4, down=False).params
  assert cost.projector_cost(dims).params == 13_160_704
  assert cost.fix_channels_params(dims) == 3_710_976
  assert cost.predictor_cost().params == 2_109_696
  # bossnas_jax does not build the never-run `_d` branches of block 0, layer 0.
  dead = 0
  for o in ss.ops_in_block(0):
    if ss.op_scale(o) < 3:
      same = cost.op_parts(dims, 0, 0, o, down=False)
      dead += sum(c.params for k, c in cost.op_parts(dims, 0, 0, o, down=True).items()
                  if k not in same)
  assert cost.supernet_params(dims) == 854_265_344 - dead == 804_523_008


def test_path_madds_by_hand():
  dims = ss.Dims()
  # ResConv@56 in a non-first layer, same scale: 1x1 256->64, PEG, 3x3, 1x1 64->256 at 56².
  n = 56 * 56
  want = 256 * 64 * n + 9 * 64 * n + 9 * 64 * 64 * n + 64 * 256 * n
  assert cost.op_cost(dims, 0, 1, 5, down=False).madds == want
  # ResAtt@7 entered from 14: 1x1 at 14², PEG/s2, qkv, q·kᵀ and attn·v, out 1x1, 3x3/s2 shortcut.
  want = (1024 * 512 * 196 + 9 * 512 * 49 + 3 * 512 * 512 * 49 + 2 * 512 * 49 * 49
          + 512 * 2048 * 49 + 9 * 1024 * 2048 * 49)
  assert cost.op_cost(dims, 1, 2, 0, down=True).madds == want
  with pytest.raises(ValueError, match="no down-scale entry"):
    cost.op_cost(dims, 2, 1, 2, down=True)


@pytest.fixture(scope="module")
def block_shapes():
  return {b: jax.eval_shape(lambda b=b: supernet.init_block(TINY, b, jax.random.key(0)))
          for b in range(ss.NUM_BLOCKS)}


def test_supernet_params_equal_flax(block_shapes):
  for b, shapes in block_shapes.items():
    params = shapes["params"]
    assert _n(params) == cost.block_params(TINY, b)
    for layer in range(ss.LAYERS_PER_BLOCK):
      for op in ss.ops_in_block(b):
        assert _n(params[supernet.op_name(layer, op)]) == cost.op_params(TINY, b, layer, op), \
            (b, layer, op)
    if b == 0:
      assert _n(params["stem"]) == cost.stem_cost(TINY).params
      for d in range(ss.NUM_SCALES):
        assert _n(params[f"adapter{d}"]) == cost.adapter_cost(TINY, d).params
  assert sum(_n(s["params"]) for s in block_shapes.values()) == cost.supernet_params(TINY)


def _triples(block, in_scale, path):
  out, prev = set(), in_scale
  for i, o in enumerate(path):
    d = ss.op_scale(o)
    out.add((i, o, not (block == 0 and i == 0) and d == prev - 1))
    prev = d
  return out


def _covering_paths(block):
  """A few candidates that together use every (layer, op, entry) of the block."""
  cands = list(ss.all_candidates(block))
  need = set().union(*(_triples(block, s, p) for s, p in cands))
  chosen = []
  while need:
    best = max(cands, key=lambda c: len(_triples(block, *c) & need))
    chosen.append(best)
    need -= _triples(block, *best)
  return chosen


def test_path_params_equal_path_variables(block_shapes):
  for b in range(ss.NUM_BLOCKS):
    for s, p in _covering_paths(b):
      sub = supernet.path_variables(block_shapes[b], TINY, b, s, p)
      assert _n(sub["params"]) == cost.path_cost(TINY, b, s, p).params, (b, s, p)


def test_necks_equal_flax():
  proj = heads.Projector(TINY, 64, 32)
  shapes = jax.eval_shape(lambda: proj.init(jax.random.key(0), proj.init_inputs(), train=True,
                                            method=heads.Projector.call_all))
  assert _n(shapes["params"]) == cost.projector_cost(TINY, hidden=64, out=32).params
  fix = sum(_n(v) for k, v in shapes["params"].items() if k.startswith("fix"))
  assert fix == cost.fix_channels_params(TINY)
  pred = heads.Predictor(48, 32)
  shapes = jax.eval_shape(lambda: pred.init(jax.random.key(0), np.zeros((1, 32)), train=True))
  assert _n(shapes["params"]) == cost.predictor_cost(32, 48, 32).params
  # What a path ending at 14x14 runs in the neck: its adapter and the MLP.
  c = cost.projector_cost(ss.Dims(), in_scale=1)
  assert c.madds == 4 * 1024 * 49 + 1024 * 2048 * 49 + 2048 * 4096 + 4096 * 256


def test_report_prints_acceptance_figures(capsys):
  assert cost_report.main([]) == 0
  out = capsys.readouterr().out
  for figure in ("3,441,888,768", "3,447,303,680", "5,736,197,632", "7,948,768,256",
                 "10,513,473,536", "37,231,232", "42,646,144", "37,319,080", "38,415,960",
                 "854,265,344", "13,160,704", "3,710,976", "2,109,696"):
    assert figure in out


def test_cost_command_rates_one_network_or_refuses(capsys):
  assert cost_report.main(["--arch", "bossnet_t0"]) == 0
  out = capsys.readouterr().out
  assert "3,442,978,304 MAdds" in out and "42,646,144 params" in out  # True MAdds, official params.
  arch = "4444-4321-1011-0010"
  assert cost_report.main(["--arch", arch, "--resolution", "32", "--width_multiplier", "0.0625",
                    "--num_classes", "10", "--dim_head", "8"]) == 0
  c = cost.architecture_cost(arch, 32, width_multiplier=1 / 16, num_classes=10, dim_head=8)
  assert f"{c.madds:>15,} MAdds {c.params:>12,} params" in capsys.readouterr().out
  assert cost_report.main(["--arch", "9999"]) == 1
  assert "expected 4 paths" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # Options of one network without a network.
    cost_report.main(["--resolution", "32"])
  # The module's old name runs the same command (it used to ignore its arguments, exit 0).
  proc = subprocess.run([sys.executable, "-m", "bossnas_jax.models.cost", "--arch", "9999"],
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 1 and "expected 4 paths" in proc.stderr
