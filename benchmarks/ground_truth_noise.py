r"""Where does the ranking benchmark's ground-truth noise come from? (minutes)

  python benchmarks/ground_truth_noise.py --workdir runs/ranking_quality \
      [--out benchmarks/results/ground_truth_noise.json]

Evaluates every finished training of a ranking benchmark's workdir (`benchmarks/ranking_quality.py
--workdir`) on the split its ground truth used, with the weights of `--metric`, keeps each one's
per-example correctness (cached in WORKDIR/noise), and prints how the trainings differ: the shift
each seed gives every network, how often two trainings disagree on an example, and how much of the
seed-to-seed difference in top-1 test-set churn alone explains
(`ranking_quality/noise.py`).
"""

import os

import numpy as np
from absl import flags, logging

from bossnas_jax.data import sources
from bossnas_jax.infra import cli, compile_cache, files
from bossnas_jax.ranking_quality import noise
from bossnas_jax.retrain import evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "The ranking benchmark's --workdir.")
_OUT = flags.DEFINE_string("out", None, "Also write the statistics to this JSON file.")
_BATCH = flags.DEFINE_integer("batch_size", 1000, "Evaluation batch size.")
_METRIC = flags.DEFINE_enum("metric", "ema", ["raw", "ema"],
                            "Weights evaluated: the benchmark's --metric.")
flags.mark_flags_as_required(["workdir"])


def correctness(run: str, ema: bool) -> np.ndarray:
  """Per-example top-1 correctness of one retraining workdir on its config's eval split."""
  config = files.read_json(os.path.join(run, files.CONFIG_JSON))
  d, resolution = config["data"], int(config["model"]["resolution"])
  model, variables = evaluate.load_model(run, ema=ema)
  source = sources.open_source(d["name"], d["eval_split"], d["data_dir"])
  return np.concatenate([np.argmax(logits, -1) == labels for logits, labels in
                         evaluate.logits_batches(model, variables, source, resolution,
                                                 _BATCH.value)])


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  root = os.path.join(_WORKDIR.value, "gt")
  if not files.isdir(root):
    cli.fail(f"--workdir {_WORKDIR.value} has no gt/ folder: pass the --workdir of "
             "benchmarks/ranking_quality.py.")
  compile_cache.enable(os.path.join(_WORKDIR.value, "jax_cache"))
  cache_dir = os.path.join(_WORKDIR.value, "noise")
  files.makedirs(cache_dir)
  correct = {}
  for name in sorted(files.listdir(root)):
    run = os.path.join(root, name)
    arch, _, seed = name.rpartition("_s")
    results = os.path.join(run, "results.json")
    if not files.isfile(results) or not seed.isdigit():
      continue  # unfinished
    cache = os.path.join(cache_dir, f"{name}_{_METRIC.value}.npy")
    if os.path.exists(cache):
      correct[(arch, int(seed))] = np.load(cache)
      continue
    correct[(arch, int(seed))] = c = correctness(run, _METRIC.value == "ema")
    np.save(cache, c)
    print(f"{name}: top-1 {100 * c.mean():.2f}%", flush=True)
  stats = noise.noise_statistics(correct)
  print(noise.format_noise(stats))
  if _OUT.value:
    files.write_json(_OUT.value, stats, indent=1)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
