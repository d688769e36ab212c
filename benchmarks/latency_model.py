r"""Is a network's latency the sum of its parts? Predicted (a latency table) against measured.

  python benchmarks/latency_model.py --table runs/demo/latency_cpu.json --search runs/demo \
      [--num 20] [--out benchmarks/results/latency_model_cpu.json]

Times `--num` random valid architectures and the search's choice (`--search`: its
architecture.json) end to end, with the table's settings and timing method
(`models/latency.py`: jit, warm-up, `block_until_ready`, repeats), and prints predicted against
measured with the mean and largest relative error: before and after the smallest correction, one
constant per network fitted on the sample (what launch overhead and fusion across parts add or
save), which `--out` records with every row. Run it on a quiet machine.
"""

import os

import numpy as np
from absl import flags

from bossnas_jax import search_space as ss
from bossnas_jax.infra import cli, files
from bossnas_jax.models import latency
from bossnas_jax.search import architecture

_TABLE = flags.DEFINE_string("table", None, "A latency table (launch/latency_table.py).")
_SEARCH = flags.DEFINE_string("search", None, "A main job's workdir: its choice is timed too.")
_NUM = flags.DEFINE_integer("num", 20, "Random architectures.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sample.")
_OUT = flags.DEFINE_string("out", None, "Also write the rows and errors to this JSON file.")
flags.mark_flags_as_required(["table"])


def sample(num: int, seed: int) -> list[str]:
  """`num` distinct valid architectures drawn block by block (a uniform path among the
  candidates at the scale the previous block ends at)."""
  rng = np.random.default_rng(seed)
  out: set[str] = set()
  while len(out) < num:
    paths, scale = [], ss.STEM_SCALE
    for b in range(ss.NUM_BLOCKS):
      cands = ss.candidates(b, scale)
      p = cands[int(rng.integers(len(cands)))]
      paths.append(ss.format_path(p))
      scale = ss.output_scale(p)
    out.add("-".join(paths))
  return sorted(out)


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}", cli.USAGE_STATUS)
  table = latency.load_table(_TABLE.value)
  head = table["header"]
  settings = latency.TableSettings(**{k: head[k] for k in latency.SETTINGS})
  archs = sample(_NUM.value, _SEED.value)
  if _SEARCH.value:
    chosen, _ = architecture.load_architecture(
        os.path.join(_SEARCH.value, architecture.ARCHITECTURE_JSON))
    archs.append(str(chosen))
  rows = []
  for k, a in enumerate(archs):
    predicted = latency.predict(table, a, _TABLE.value)
    measured = latency.time_network(a, settings, repeats=int(head["repeats"]),
                                    warmup=int(head["warmup"]))
    rows.append({"architecture": a, "predicted_ms": predicted, "measured_ms": measured["mean"],
                 "measured_std_ms": measured["std"]})
    print(f"[{k + 1}/{len(archs)}] {a}: predicted {predicted:.3f} ms, measured "
          f"{measured['mean']:.3f} ± {measured['std']:.3f} ms", flush=True)
  pred = np.array([r["predicted_ms"] for r in rows])
  meas = np.array([r["measured_ms"] for r in rows])
  constant = float(np.mean(meas - pred))  # least squares for a per-network offset
  err = np.abs(pred - meas) / meas
  err_c = np.abs(pred + constant - meas) / meas
  print(f"\n{len(rows)} networks on {head['device_kind']} ({head['backend']}), batch "
        f"{settings.batch}, {settings.dtype}, {settings.resolution}x{settings.resolution}")
  print(f"sum of parts:            mean relative error {100 * err.mean():.1f}%, largest "
        f"{100 * err.max():.1f}%")
  print(f"plus {constant:+.3f} ms per network: mean relative error {100 * err_c.mean():.1f}%, "
        f"largest {100 * err_c.max():.1f}%")
  if _OUT.value:
    files.write_json(_OUT.value, {"header": head, "rows": rows, "constant_ms": constant,
                                  "mean_relative_error": float(err.mean()),
                                  "max_relative_error": float(err.max()),
                                  "mean_relative_error_corrected": float(err_c.mean()),
                                  "max_relative_error_corrected": float(err_c.max())}, indent=1)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
