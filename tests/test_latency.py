"""Latency tables: the parts of a searched BossNet, timing, the table's resume and refusals, and
the additive prediction."""

import json

import numpy as np
import pytest

from bossnas_jax import search_space as ss
from bossnas_jax.models import bossnet, latency

TINY = latency.TableSettings(resolution=32, width_multiplier=1 / 16, num_classes=10, dim_head=8)
ARCH = ss.parse_architecture("4444-3323-3222-3332")


def _parts(arch):
  return (["stem"] + [latency.entry_name(b, arch.input_scale(b), p)
                      for b, p in enumerate(arch.paths)] + ["head"])


def test_parts_chain_into_the_searched_network():
  """Each part takes what the previous one gives, and the chain ends in the network's logits
  shape: the parts are the whole network, cut where the search decides."""
  import jax
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), np.float32)
  for name in _parts(ARCH):
    module, shape = latency.part(name, latency.TableSettings(**{**TINY.__dict__, "batch": 2}))
    assert tuple(x.shape) == shape, name
    x = jax.eval_shape(lambda x, m=module: m.apply(m.init(jax.random.key(0), x), x), x)
  model = bossnet.build(str(ARCH), width_multiplier=1 / 16, num_classes=10, dim_head=8,
                        empty_stage_stride="stage")
  assert x.shape == (2, 10) == jax.eval_shape(
      lambda v: model.apply(v, np.zeros((2, 32, 32, 3), np.float32)),
      bossnet.variable_shapes(model, 32)).shape
  names = latency.part_names()
  assert len(names) == 2 + sum(len(ss.candidates(b, s)) for b in range(ss.NUM_BLOCKS)
                               for s in ss.input_scales(b))
  assert set(_parts(ARCH)) <= set(names)


def test_table_resumes_records_its_settings_and_refuses_others(tmp_path, monkeypatch):
  path = str(tmp_path / "table.json")
  names = ["stem", "head", latency.entry_name(3, 1, (3, 3, 3, 2))]
  calls = []
  real = latency.time_part

  def killed_after_2(name, *a, **k):
    if len(calls) == 2:
      raise KeyboardInterrupt
    calls.append(name)
    return real(name, *a, **k)

  monkeypatch.setattr(latency, "time_part", killed_after_2)
  with pytest.raises(KeyboardInterrupt):
    latency.build_table(path, TINY, repeats=2, warmup=1, names=names, save_every=1)
  assert sorted(json.load(open(path))["entries"]) == sorted(names[:2])
  calls.clear()
  monkeypatch.setattr(latency, "time_part", lambda name, *a, **k: (calls.append(name),
                                                                   real(name, *a, **k))[1])
  table = latency.build_table(path, TINY, repeats=2, warmup=1, names=names)
  assert calls == names[2:]  # the finished entries are kept, not timed again
  for e in table["entries"].values():
    assert e["count"] == 2 and e["mean"] > 0 and e["std"] >= 0 and e["seconds"] > 0
    assert e["min"] <= e["median"] <= e["mean"] + e["std"]
  head = table["header"]
  assert (head["resolution"], head["batch"], head["dtype"], head["backend"]) == (32, 1,
                                                                                 "float32", "cpu")
  assert head["device_kind"] and head["jax_version"]
  with pytest.raises(latency.LatencyError, match=r"batch 1 in the table, 8 here.*dtype"):
    latency.check_settings(head, latency.TableSettings(**{**TINY.__dict__, "batch": 8,
                                                          "dtype": "bfloat16"}), path)
  with pytest.raises(latency.LatencyError, match="measured for other settings"):
    latency.build_table(path, latency.TableSettings(resolution=64), names=names)
  (tmp_path / "other.json").write_text("{}")
  with pytest.raises(latency.LatencyError, match="is not a latency table"):
    latency.load_table(str(tmp_path / "other.json"))
  with pytest.raises(latency.LatencyError, match="does not exist"):
    latency.load_table(str(tmp_path / "none.json"))
  (tmp_path / "v1.json").write_text(json.dumps({"header": {"format": "bossnas_jax/latency-v1"}}))
  with pytest.raises(latency.LatencyError, match="older bossnas_jax .*build it again"):
    latency.load_table(str(tmp_path / "v1.json"))


def test_prediction_adds_the_parts_and_names_a_missing_one():
  entries = {name: {"count": 2, "mean": float(k + 1), "std": 0.0, "median": float(k + 2),
                   "min": 0.5} for k, name in enumerate(_parts(ARCH))}
  table = {"header": {}, "entries": entries}
  assert latency.predict(table, ARCH, statistic="median") == pytest.approx(sum(range(2, 8)))
  assert latency.predict(table, ARCH, statistic="mean") == pytest.approx(sum(range(1, 7)))
  assert latency.predict(table, ARCH) == pytest.approx(3.0)  # the default: the minima
  table["header"][latency.CONSTANT] = 1.25  # fitted on whole networks (latency_model --calibrate)
  assert latency.predict(table, ARCH) == pytest.approx(4.25)
  assert latency.predict(table, ARCH, calibrated=False) == pytest.approx(3.0)
  del table["entries"]["block2_in14_3222"]
  with pytest.raises(latency.LatencyError, match="no entry 'block2_in14_3222'"):
    latency.predict(table, str(ARCH), "t.json")
  with pytest.raises(latency.LatencyError, match="not 'stem', 'head'"):
    latency.part("block9_in14_3222", TINY)


def test_random_variables_keep_a_whole_network_finite():
  import jax
  model = bossnet.build(str(ARCH), width_multiplier=1 / 16, num_classes=10, dim_head=8,
                        empty_stage_stride="stage")
  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 32, 32, 3)))
  v = latency.random_variables(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
  assert float(v["params"]["bn1"]["scale"].min()) == 1.0
  assert float(v["batch_stats"]["bn1"]["var"].min()) == 1.0
  out = np.asarray(model.apply(v, x, train=False))
  assert out.shape == (2, 10) and np.all(np.isfinite(out)) and np.abs(out).max() > 0
