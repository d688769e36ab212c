r"""Is a network's latency the sum of its parts? Predicted (a latency table) against measured.

  python benchmarks/latency_model.py --table runs/demo/latency_cpu.json --search runs/demo \
      [--num 20] [--out benchmarks/results/latency_model_cpu.json] [--calibrate]

Times `--num` random valid architectures and the search's choice (`--search`: its
architecture.json) end to end, with the table's settings and timing method
(`models/latency.py`: jit, warm-up, `block_until_ready`, repeats), and prints predicted against
measured with the mean and largest relative error: before and after the smallest correction, one
constant per network fitted on the sample (what launch overhead and fusion across parts add or
save), which `--out` records with every row. Each statistic of the timings (mean, median, min)
is compared with the same statistic of the networks; predictions use `latency.STATISTIC`.
`--calibrate` stores the constant fitted for that statistic in the table's header, and every
later prediction from the table (the search's too) adds it. Run it on a quiet machine.
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
_CALIBRATE = flags.DEFINE_bool("calibrate", False, "Store the fitted per-network constant in the "
                               "table: later predictions add it.")
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
    measured = latency.time_network(a, settings, repeats=int(head["repeats"]),
                                    warmup=int(head["warmup"]))
    parts = {s: latency.predict(table, a, _TABLE.value, s, calibrated=False)
             for s in latency.STATISTICS}  # the plain sum: what a constant is fitted to
    rows.append({"architecture": a, "measured_std_ms": measured["std"],
                 **{f"predicted_{s}_ms": v for s, v in parts.items()},
                 **{f"measured_{s}_ms": measured[s] for s in latency.STATISTICS}})
    s = latency.STATISTIC
    print(f"[{k + 1}/{len(archs)}] {a}: {s} predicted {rows[-1][f'predicted_{s}_ms']:.3f} ms, "
          f"measured {measured[s]:.3f} ms (mean {measured['mean']:.3f} ± {measured['std']:.3f})",
          flush=True)
  print(f"\n{len(rows)} networks on {head['device_kind']} ({head['backend']}), batch "
        f"{settings.batch}, {settings.dtype}, {settings.resolution}x{settings.resolution}")
  errors = {}
  for s in latency.STATISTICS:  # each statistic of the parts against the same of the networks
    pred = np.array([r[f"predicted_{s}_ms"] for r in rows])
    meas = np.array([r[f"measured_{s}_ms"] for r in rows])
    constant = float(np.mean(meas - pred))  # least squares for a per-network offset
    err, err_c = np.abs(pred - meas) / meas, np.abs(pred + constant - meas) / meas
    errors[s] = {"constant_ms": constant, "mean_relative_error": float(err.mean()),
                 "max_relative_error": float(err.max()),
                 "mean_relative_error_corrected": float(err_c.mean()),
                 "max_relative_error_corrected": float(err_c.max())}
    used = " (what predictions use)" if s == latency.STATISTIC else ""
    print(f"{s}{used}: sum of parts: mean relative error {100 * err.mean():.1f}%, largest "
          f"{100 * err.max():.1f}%; plus {constant:+.3f} ms per network: "
          f"{100 * err_c.mean():.1f}%, largest {100 * err_c.max():.1f}%")
  if _CALIBRATE.value:
    head[latency.CONSTANT] = errors[latency.STATISTIC]["constant_ms"]
    head["calibration"] = {"networks": len(rows), "statistic": latency.STATISTIC,
                           **errors[latency.STATISTIC]}
    files.write_json(_TABLE.value, table, indent=1)
    print(f"stored {head[latency.CONSTANT]:+.3f} ms per network in {_TABLE.value}")
  if _OUT.value:
    files.write_json(_OUT.value, {"header": head, "statistic": latency.STATISTIC, "rows": rows,
                                  "errors": errors, **errors[latency.STATISTIC]}, indent=1)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
