"""architecture.json, retrain_config.py, the plots, and launch/search.py on synthetic rank files."""

import importlib.util
import json
import os
import subprocess
import sys
import types

import ml_collections
import pytest
from test_search import write_synthetic_ratings

from bossnas_jax import search_space as ss
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.models import cost
from bossnas_jax.search import architecture, export
from bossnas_jax.search import problem as sp


def _load(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module




@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("export"))
  write_synthetic_ratings(d, seed=3, per_scale=4)
  lines = []
  res = export.search_and_export(d, {"strategy": "exhaustive", "max_params": 60e6},
                                 log=lines.append)
  return d, res, lines[0]


def test_architecture_json_round_trip(exported):
  d, res, _ = exported
  arch, record = architecture.load_architecture(os.path.join(d, architecture.ARCHITECTURE_JSON))
  assert arch == res.architecture
  assert record["paths"] == [ss.format_path(p) for p in arch.paths]
  assert len(record["ops"]) == 16 and record["ops"] == list(arch.ops)
  assert record["stage_encoding"] == [list(s) for s in arch.stage_encoding()]
  assert (record["strategy"], record["resolution"]) == ("exhaustive", 224)
  assert record["budget"] == {"max_madds": None, "max_params": 60e6, "max_latency_ms": None,
                              "convention": "true"}
  assert record["latency"] is None  # no latency table
  assert record["score"] == pytest.approx(sum(record["block_scores"]))
  assert record["search"]["exact_optimum"] == str(arch)
  config = architecture.bossnet_config(record)
  assert config.empty_stage_stride == "stage" and config.encoding == arch.stage_encoding()
  for conv in cost.CONVENTIONS:
    want = cost.bossnet_cost(config, 224, conv)
    assert record["cost"][conv] == {"madds": want.madds, "params": want.params}
  assert record["cost"]["true"] == {"madds": res.search.chosen.cost.madds,
                                    "params": res.search.chosen.cost.params}
  assert record["cost"]["true"]["params"] <= 60e6


def test_load_architecture_errors(tmp_path, exported):
  d, _, _ = exported
  with pytest.raises(architecture.ArchitectureFileError, match="does not exist"):
    architecture.load_architecture(str(tmp_path / "architecture.json"))
  with open(os.path.join(d, architecture.ARCHITECTURE_JSON)) as f:
    record = json.load(f)
  bad = tmp_path / "edited.json"
  bad.write_text(json.dumps({**record, "ops": [0] * 16}))
  with pytest.raises(architecture.ArchitectureFileError, match="disagrees"):
    architecture.load_architecture(str(bad))
  bad.write_text(json.dumps({**record, "architecture": "5433-5230-0010-0000"}))
  with pytest.raises(architecture.ArchitectureFileError, match="position 1"):
    architecture.load_architecture(str(bad))


def test_files_and_printout(exported):
  d, res, text = exported
  assert set(res.files) == {"architecture_json", "retrain_config", "pareto_png",
                            "block_scores_png"}
  for path in res.files.values():
    assert os.path.dirname(path) == d and path in text
  assert str(res.architecture) in text and "MAdds" in text
  for key in ("pareto_png", "block_scores_png"):
    with open(res.files[key], "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    h, w = matplotlib.image.imread(res.files[key]).shape[:2]
    assert h > 300 and w > 600


def test_retrain_config(exported, monkeypatch):
  d, res, _ = exported
  module = _load("retrain_config_under_test", res.files["retrain_config"])
  assert module.ARCHITECTURE == str(res.architecture) and module.RESOLUTION == 224

  def base(arg=None):
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"arch": "bossnet_t0"})
    c.arg = arg
    return c

  fake = types.ModuleType("configs.retrain")
  fake.get_config = base
  monkeypatch.setitem(sys.modules, "configs.retrain", fake)
  import configs
  monkeypatch.setattr(configs, "retrain", fake, raising=False)
  config = module.get_config("x")
  assert config.model.arch == str(res.architecture) and config.arg == "x"
  assert config.model.empty_stage_stride == "stage" and config.model.resolution == 224
  assert bs.resolve_config(config.model.arch, empty_stage_stride="stage").encoding == \
      res.architecture.stage_encoding()
  monkeypatch.setitem(sys.modules, "configs.retrain", None)  # As if the file did not exist.
  monkeypatch.delattr(configs, "retrain")
  with pytest.raises(ModuleNotFoundError, match="configs/retrain.py"):
    module.get_config()


def test_launch_search_with_a_smaller_budget(tmp_path, capsys):
  d = str(tmp_path)
  # Scores that favour big blocks, as real ratings tend to: the unbudgeted choice is expensive.
  write_synthetic_ratings(
      d, seed=4, score=lambda b, s, p, rng: float(
          -cost.searched_block_cost(b, s, p).madds / 1e9 + rng.normal(0, 0.05)))
  with open(os.path.join(d, "config.json"), "w") as f:  # As the main job saves it.
    json.dump({"seed": 5, "search": {"strategy": "evolution", "population": 30,
                                     "generations": 10, "max_madds": None}}, f)
  main_job_export = export.search_and_export(d, json.load(open(os.path.join(d, "config.json"))),
                                             log=None)  # As the main job exports its choice.
  first = export.research(d)
  big = first.search.chosen.cost.madds
  assert first.search.settings.seed == 5 and first.search.settings.population == 30
  # A re-search writes beside the main job's choice, in a folder named after its settings.
  assert first.files["architecture_json"] == os.path.join(
      d, "search", "evolution_res224_seed5", architecture.ARCHITECTURE_JSON)
  assert first.architecture == main_job_export.architecture
  # No searched BossNet is half as costly as another (3.07G..5.32G at 224): a clear error.
  with pytest.raises(sp.SearchError, match="smallest MAdds any architecture reaches is"):
    export.research(d, max_madds=big / 2)
  lowest = min(e.cost.madds for e in first.search.front)
  budget = (lowest + big) / 2
  out = str(tmp_path / "smaller")
  second = export.research(d, out, max_madds=float(f"{budget:.6g}"))
  chosen = second.search.chosen
  assert chosen.architecture != first.architecture
  assert chosen.cost.madds <= float(f"{budget:.6g}") < big
  assert ss.parse_architecture(str(chosen.architecture)) == chosen.architecture
  assert architecture.load_architecture(second.files["architecture_json"])[0] == chosen.architecture
  printed = capsys.readouterr().out
  assert f"chosen: {chosen.architecture}" in printed and out in printed
  # The main job's export in the workdir is left alone by both.
  assert (architecture.load_architecture(os.path.join(d, "architecture.json"))[0]
          == first.architecture)
  third = export.research(d, strategy="exhaustive", max_madds=float(f"{budget:.6g}"),
                          max_params=40e6)
  assert os.path.basename(os.path.dirname(third.files["architecture_json"])) == (
      f"exhaustive_madds{float(f'{budget:.6g}') / 1e9:g}G_params40M_res224")


def test_launch_search_errors(tmp_path):
  root = os.path.join(os.path.dirname(__file__), os.pardir)
  for args, status, text in (([str(tmp_path / "missing")], 1, "does not exist"),
                             ([str(tmp_path), "--strategy", "random"], 2, "--strategy")):
    proc = subprocess.run([sys.executable, os.path.join(root, "launch", "search.py"),
                           "--workdir", *args], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == status and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("launch/search.py: error: ") and text in lines[0]
  with pytest.raises(sp.SearchError, match="strategy='random'"):
    export.search_and_export(str(tmp_path), {"strategy": "random"}, log=None)


def test_search_and_export_in_a_bucket(exported, bucket_dir, capsys):
  """Rank files and config in a gs:// workdir (an emulated bucket): launch/search.py reads them
  there and writes the four exports there, the same as on a disk."""
  from bossnas_jax.infra import files
  d, res, _ = exported
  write_synthetic_ratings(bucket_dir, seed=3, per_scale=4)
  files.write_json(os.path.join(bucket_dir, "config.json"),
                   {"search": {"strategy": "exhaustive", "max_params": 60e6}})
  got = export.research(bucket_dir, bucket_dir)
  assert got.architecture == res.architecture
  assert sorted(files.listdir(bucket_dir)) == sorted(
      ["config.json", "ratings", architecture.ARCHITECTURE_JSON, export.RETRAIN_CONFIG,
       export.PARETO_PNG, export.BLOCK_SCORES_PNG])
  arch, _ = architecture.load_architecture(os.path.join(bucket_dir, architecture.ARCHITECTURE_JSON))
  assert arch == res.architecture
  assert files.read_bytes(os.path.join(bucket_dir, architecture.ARCHITECTURE_JSON)) == open(
      os.path.join(d, architecture.ARCHITECTURE_JSON), "rb").read()
  for png in (export.PARETO_PNG, export.BLOCK_SCORES_PNG):
    assert files.read_bytes(os.path.join(bucket_dir, png))[:8] == b"\x89PNG\r\n\x1a\n"
  assert str(arch) in files.read_text(os.path.join(bucket_dir, export.RETRAIN_CONFIG))
  assert bucket_dir in capsys.readouterr().out
