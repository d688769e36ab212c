"""One line per user mistake (infra/cli.py): config overrides, project errors, --help, status."""

import os
import subprocess
import sys

import ml_collections
import pytest

from bossnas_jax.infra import cli, errors

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


def _config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.train = ml_collections.ConfigDict({"epochs": 3, "base_lr": 0.1, "warmup_epochs": 1.0})
  c.data = ml_collections.ConfigDict({"name": "x", "data_dir": None})
  return c


def test_unknown_config_field_names_it_and_the_closest_fields():
  c = _config()
  assert list(cli.config_fields(c)) == ["data.data_dir", "data.name", "seed", "train.base_lr",
                                        "train.epochs", "train.warmup_epochs"]
  msg = cli.unknown_field_message(c, "train.epoch")
  assert msg.startswith("--config.train.epoch: the config has no field 'train.epoch'.")
  assert "Did you mean train.epochs?" in msg
  assert "The fields of train: base_lr, epochs, warmup_epochs." in msg
  # A misspelt section: the closest full paths, and the sections.
  msg = cli.unknown_field_message(c, "trian.epochs")
  assert "Did you mean train.epochs" in msg and "Its sections: data, seed, train." in msg
  # Nothing close: no suggestion, still the fields of the section.
  msg = cli.unknown_field_message(c, "train.foo")
  assert "Did you mean" not in msg and "The fields of train:" in msg


def test_every_project_error_is_a_user_error():
  from bossnas_jax import search_space
  from bossnas_jax.convert import state_dicts as convert
  from bossnas_jax.data import embedded, sources
  from bossnas_jax.infra import checkpoint_io, files
  from bossnas_jax.models import bossnet_spec
  from bossnas_jax.rating import rank_files
  from bossnas_jax.retrain import evaluate
  from bossnas_jax.search import architecture, population, problem

  kinds = [checkpoint_io.CheckpointError, convert.ConversionError, evaluate.EvaluateError,
           architecture.ArchitectureFileError, files.WorkdirError, errors.ConfigError,
           errors.TrainingError, population.RateError, rank_files.RatingsError,
           problem.SearchError, search_space.SearchSpaceError, embedded.EmbeddedDataError,
           sources.DataSourceError, bossnet_spec.BossNetSpecError]
  assert all(issubclass(k, errors.UserError) for k in kinds)


def _run(*args, env=None):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})


def _one_error_line(result, status: int, script: str) -> str:
  assert result.returncode == status, (result.returncode, result.stderr[-2000:])
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), result.stderr[-2000:]
  return lines[0]


def test_launch_scripts_print_one_line_per_mistake(tmp_path):
  workdir = str(tmp_path / "w")
  line = _one_error_line(_run("launch/retrain.py", "--config", "configs/retrain.py:demo",
                              "--workdir", workdir, "--config.train.epoch=1"),
                         2, "launch/retrain.py")
  assert "no field 'train.epoch'" in line and "Did you mean train.epochs?" in line
  line = _one_error_line(_run("launch/train_blocks.py", "--config", "configs/nope.py",
                              "--workdir", workdir), 2, "launch/train_blocks.py")
  assert "cannot load the config file" in line and "configs/nope.py" in line
  # A project error from inside main: the message alone, status 1; the traceback on request.
  line = _one_error_line(_run("launch/evaluate.py", "--checkpoint", str(tmp_path / "none")),
                         1, "launch/evaluate.py")
  assert "does not exist" in line
  shown = _run("launch/evaluate.py", "--checkpoint", str(tmp_path / "none"),
               env={cli.TRACEBACK_ENV: "1"})
  assert shown.returncode != 0 and "Traceback" in shown.stderr and "EvaluateError" in shown.stderr
  for flag, text in (("--limit=0", "evaluate at least 1 image"),
                     ("--batch_size=0", "batch size must be at least 1")):
    line = _one_error_line(_run("launch/evaluate.py", "--checkpoint", workdir, flag), 1,
                           "launch/evaluate.py")
    assert text in line
  # An empty --arch is an error, not the config's default network.
  line = _one_error_line(_run("launch/retrain.py", "--config", "configs/retrain.py:demo",
                              "--workdir", workdir, "--arch="), 1, "launch/retrain.py")
  assert "config.model.arch=''" in line


@pytest.mark.parametrize("script", ["train_blocks.py", "retrain.py"])
def test_help_exits_0_and_explains_config_overrides(script):
  result = _run(os.path.join("launch", script), "--help")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "--workdir" in result.stdout and "--config.FIELD=VALUE" in result.stdout


def test_show_views_refuses_a_bad_index_image_or_out(tmp_path):
  not_image = tmp_path / "notes.png"
  not_image.write_text("not an image")
  config = ("--config", "configs/hytra.py:demo")
  line = _one_error_line(_run("launch/show_views.py", *config, "--index=999999",
                              f"--out={tmp_path / 'v.png'}"), 1, "launch/show_views.py")
  assert "--index=999999" in line and "give an index from 0 to" in line
  line = _one_error_line(_run("launch/show_views.py", *config, f"--image={not_image}",
                              f"--out={tmp_path / 'v.png'}"), 1, "launch/show_views.py")
  assert str(not_image) in line and "not an image file" in line
  line = _one_error_line(_run("launch/show_views.py", *config, f"--out={tmp_path}"), 1,
                         "launch/show_views.py")
  assert "give the path of a .png file" in line


def test_cpu_collective_limits_are_raised_unless_the_user_set_them():
  from bossnas_jax.infra import parallel

  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  parallel.default_cpu_collective_timeouts(env)
  limit = parallel.CPU_COLLECTIVE_TIMEOUT_S
  assert env["XLA_FLAGS"].split() == [
      "--xla_force_host_platform_device_count=8",
      f"--xla_cpu_collective_timeout_seconds={limit}",
      f"--xla_cpu_collective_call_terminate_timeout_seconds={limit}"]
  # A value the user chose stays, and calling it again adds nothing.
  env = {"XLA_FLAGS": "--xla_cpu_collective_call_terminate_timeout_seconds=5"}
  parallel.default_cpu_collective_timeouts(env)
  parallel.default_cpu_collective_timeouts(env)
  assert env["XLA_FLAGS"].split() == ["--xla_cpu_collective_call_terminate_timeout_seconds=5",
                                      f"--xla_cpu_collective_timeout_seconds={limit}"]
  env = {}
  parallel.default_cpu_collective_timeouts(env)
  assert len(env["XLA_FLAGS"].split()) == 2
