r"""Every user mistake of issue 16, run as a user runs it: input -> exit status -> what it printed.

  python tests/bad_inputs.py --run runs/demo [--markdown]

Not collected by pytest (tests/test_cli.py and the module tests check each line's content); this
prints the table the issue's closing note asks for, from the checkout it is run in. `--run` is a
finished main job (launch/train_blocks.py --config configs/hytra.py:demo); a 1-epoch demo retrain
on 256 images (about a minute) is made in a temporary folder for the evaluation cases.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
PY = sys.executable


def _shown(result: subprocess.CompletedProcess, want: str | None) -> str:
  """The line a user reads: the `error:` line if there is one, else the last line (or `want`'s)."""
  lines = [ln.strip() for ln in (result.stderr + "\n" + result.stdout).splitlines() if ln.strip()]
  for ln in lines:
    if ": error: " in ln or ln.startswith("error:"):
      return ln
  if want:
    for ln in lines:
      if want in ln:
        return ln
  return lines[-1] if lines else ""


def _error_lines(result: subprocess.CompletedProcess) -> int:
  return sum(1 for ln in result.stderr.splitlines() if ln.strip())


def _cases(run: str, tmp: str, ckpt: str) -> list[tuple[str, list[str], str | None]]:
  """(what the user typed, argv after python, a substring of the line to show on success)."""
  t = lambda *p: os.path.join(tmp, *p)  # noqa: E731
  demo = ["launch/train_blocks.py", "--config", "configs/hytra.py:demo"]
  rdemo = ["launch/retrain.py", "--config", "configs/retrain.py:demo"]
  views = ["launch/show_views.py", "--config", "configs/hytra.py:demo"]
  return [
      ("retrain.py --arch ''", [*rdemo, "--workdir", t("r1"), "--arch="], None),
      ("search.py --strategy greedy --max_madds 0.08e9",
       ["launch/search.py", "--workdir", run, "--strategy", "greedy", "--max_madds", "0.08e9",
        "--out", t("greedy")], "chosen"),
      ("evaluate.py --limit 0", ["launch/evaluate.py", "--checkpoint", ckpt, "--limit", "0"], None),
      ("evaluate.py --batch_size 0",
       ["launch/evaluate.py", "--checkpoint", ckpt, "--batch_size", "0"], None),
      ("python -m bossnas_jax.models.cost --arch 9999",
       ["-m", "bossnas_jax.models.cost", "--arch", "9999"], None),
      ("python -m bossnas_jax.models.cost --help",
       ["-m", "bossnas_jax.models.cost", "--help"], "usage"),
      ("train_blocks.py demo --config.data.data_dir=/nonexistent",
       [*demo, "--workdir", t("w1"), "--config.data.data_dir=/nonexistent"], None),
      ("search.py --workdir RUN (a re-search)", ["launch/search.py", "--workdir", run], "/search/"),
      ("convert import T0-nose.npz --model bossnet_t0",
       ["-m", "bossnas_jax.convert", "import", t("t0_nose.npz"), t("c1"), "--model",
        "bossnet_t0", "--dim-head", "16"], None),
      ("convert import T0-nose.npz --model bossnet_t0 --se no (SiLU)",
       ["-m", "bossnas_jax.convert", "import", t("t0_nose.npz"), t("c2"), "--model",
        "bossnet_t0", "--se", "no", "--dim-head", "16"], "note:"),
      ("train_blocks.py --config configs/nope.py", ["launch/train_blocks.py", "--config",
                                                     "configs/nope.py", "--workdir", t("w2")],
       None),
      ("train_blocks.py demo --config.train.foo=1",
       [*demo, "--workdir", t("w3"), "--config.train.foo=1"], None),
      ("retrain.py demo --arch 5433-3230-0010-9999",
       [*rdemo, "--workdir", t("r2"), "--arch", "5433-3230-0010-9999"], None),
      ("evaluate.py --checkpoint /nonexistent", ["launch/evaluate.py", "--checkpoint",
                                                 "/nonexistent"], None),
      ("train_blocks.py demo --workdir (a read-only folder)",
       [*demo, "--workdir", "/sys/bossnas_ro"], None),
      ("search.py --out FILE", ["launch/search.py", "--workdir", run, "--out", t("afile")],
       None),
      ("show_views.py demo --index 999999", [*views, "--index=999999", f"--out={t('v.png')}"],
       None),
      ("show_views.py demo --image NOT_AN_IMAGE",
       [*views, f"--image={t('afile')}", f"--out={t('v.png')}"], None),
      ("evaluate.py --split bogus", ["launch/evaluate.py", "--checkpoint", ckpt, "--split",
                                     "bogus"], None),
      ("train_blocks.py demo --config.data.train_split='train[:0]'",
       [*demo, "--workdir", t("w4"), "--config.data.train_split=train[:0]"], None),
      ("retrain.py demo --arch EMPTY_LIST.json",
       [*rdemo, "--workdir", t("r3"), "--arch", t("empty.json")], None),
      ("convert import fake.npz", ["-m", "bossnas_jax.convert", "import", t("fake.npz"),
                                   t("c3"), "--model", "bossnet_t0"], None),
      ("convert import fake.pth", ["-m", "bossnas_jax.convert", "import", t("fake.pth"),
                                   t("c4"), "--model", "bossnet_t0"], None),
      ("train_blocks.py --help", ["launch/train_blocks.py", "--help"], "--config.FIELD"),
      ("retrain.py --help", ["launch/retrain.py", "--help"], "--config.FIELD"),
      ("search.py --help", ["launch/search.py", "--help"], "the default)"),
      ("rate.py --workdir /nonexistent A", ["launch/rate.py", "--workdir", "/nonexistent",
                                            "4444-3323-2222-3332"], None),
      ("rate.py --workdir RUN 5433-3230-0010-00", ["launch/rate.py", "--workdir", run,
                                                   "5433-3230-0010-00"], None),
  ]


def _prepare(tmp: str) -> str:
  """Input files of the cases, and a small retraining whose checkpoint evaluate reads."""
  with open(os.path.join(tmp, "afile"), "w") as f:
    f.write("not an image, not a folder\n")
  with open(os.path.join(tmp, "empty.json"), "w") as f:
    json.dump([], f)
  for name in ("fake.npz", "fake.pth"):
    with open(os.path.join(tmp, name), "wb") as f:
      f.write(b"this is not a checkpoint\n" * 4)
  code = ("import sys, jax\n"
          "from bossnas_jax.convert import state_dicts as c\n"
          "from bossnas_jax.models import bossnet, bossnet_spec as bs\n"
          "cfg = bs.resolve_config('bossnet_t0_nose', width_multiplier=0.25, dim_head=16)\n"
          "v = bossnet.init_variables(bossnet.BossNet(cfg), jax.random.key(0), 64)\n"
          "c.save_npz(c.export_bossnet(v, cfg), sys.argv[1])\n")
  subprocess.run([PY, "-c", code, os.path.join(tmp, "t0_nose.npz")], cwd=ROOT, check=True)
  ckpt = os.path.join(tmp, "retrain")
  subprocess.run([PY, "launch/retrain.py", "--config", "configs/retrain.py:demo", "--workdir",
                  ckpt, "--arch", "4444-3323-2222-3332", "--config.train.epochs=1",
                  "--config.train.warmup_epochs=0.5", "--config.data.train_split=train[:256]",
                  "--config.data.eval_split=test[:200]"],
                 cwd=ROOT, check=True, capture_output=True)
  return ckpt


def _ctrl_c(tmp: str, env: dict) -> tuple[str, int, str]:
  """Block training interrupted after its first steps, as Ctrl-C does."""
  workdir = os.path.join(tmp, "interrupted")
  log = os.path.join(tmp, "interrupted.log")  # A file, not a pipe: a full pipe blocks the run.
  with open(log, "w") as out:
    p = subprocess.Popen([PY, "launch/train_blocks.py", "--config", "configs/hytra.py:demo",
                          "--workdir", workdir], cwd=ROOT, stdout=out, stderr=out, env=env)
  # metrics.jsonl gets its first line after the first optimizer step: past compilation. At most
  # 10 minutes, and no longer than the run lives.
  for _ in range(600):
    if p.poll() is not None or os.path.isfile(os.path.join(workdir, "metrics.jsonl")):
      break
    time.sleep(1)
  time.sleep(5)
  p.send_signal(signal.SIGINT)
  p.wait(timeout=300)
  err = open(log).read().replace("\r", "\n")
  lines = [ln.strip() for ln in err.splitlines() if "stopped at" in ln or ": error: " in ln]
  return "train_blocks.py demo, then Ctrl-C", p.returncode, lines[-1] if lines else err[-200:]


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--run", required=True, help="a finished demo main job's workdir")
  p.add_argument("--markdown", action="store_true", help="print a Markdown table")
  p.add_argument("--no_ctrl_c", action="store_true", help="skip the Ctrl-C case (2 minutes)")
  p.add_argument("--only_ctrl_c", action="store_true", help="run the Ctrl-C case alone")
  args = p.parse_args()
  run = os.path.abspath(args.run)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = _prepare(tmp) if not args.only_ctrl_c else ""
    for what, argv, want in [] if args.only_ctrl_c else _cases(run, tmp, ckpt):
      r = subprocess.run([PY, *argv], cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env=env)
      rows.append((what, r.returncode, _shown(r, want)))
      print(f"{what}: exit {r.returncode}, {_error_lines(r)} stderr line(s)", file=sys.stderr,
            flush=True)
    if not args.no_ctrl_c:
      rows.append(_ctrl_c(tmp, env))
  for what, rc, line in rows:
    if args.markdown:
      print(f"| `{what}` | {rc} | {line.replace('|', '/')} |")
    else:
      print(f"{what}\n  -> exit {rc}: {line}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
