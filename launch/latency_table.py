r"""Time every part of the searched BossNets on this machine's JAX device: a latency table.

  python launch/latency_table.py --config configs/hytra.py:demo --out runs/demo/latency_cpu.json
  python launch/latency_table.py --config configs/hytra.py --out latency_gpu_b64.json \
      --batch 64 --dtype bfloat16

For the final networks the config's search costs (its `search.resolution`, full width, 1,000
classes): the stem, the head and every (block, input scale, candidate path), each compiled,
warmed up and timed `--repeats` times (`models/latency.py`). Rerun the same command to resume: a
killed run keeps the entries it finished. The table's header names the device, backend, JAX
version, batch, dtype and resolution; a search with it refuses other settings.
"""

import time

import tqdm
from absl import flags
from ml_collections import config_flags

from bossnas_jax.infra import cli, parallel
from bossnas_jax.models import latency

_CONFIG = config_flags.DEFINE_config_file("config", None, "The search's experiment config.")
_OUT = flags.DEFINE_string("out", None, "The table (JSON; resumed if it exists).")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per call.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(parallel.DTYPES), "Compute dtype.")
_RESOLUTION = flags.DEFINE_integer("resolution", None, "Input side (default: search.resolution).")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per part (after 3 warm-up calls).")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; every input is a --flag (see --help).",
             cli.USAGE_STATUS)
  if _REPEATS.value < 2:
    cli.fail(f"--repeats={_REPEATS.value}: time each part at least twice (for its spread).")
  settings = latency.TableSettings(
      resolution=int(_RESOLUTION.value or _CONFIG.value.search.resolution), batch=_BATCH.value,
      dtype=_DTYPE.value)
  t0 = time.perf_counter()
  table = latency.build_table(
      _OUT.value, settings, repeats=_REPEATS.value,
      progress=lambda todo: tqdm.tqdm(todo, desc="timing parts", unit="part"))
  entries = table["entries"]
  head = table["header"]
  print(f"{_OUT.value}: {len(entries)} parts on {head['device_kind']} ({head['backend']}), "
        f"batch {settings.batch}, {settings.dtype}, {settings.resolution}x{settings.resolution}; "
        f"this run {time.perf_counter() - t0:.0f} s; "
        f"{latency.STATISTIC}s: stem {latency.entry_ms(table, 'stem'):.3f} ms, head "
        f"{latency.entry_ms(table, 'head'):.3f} ms, blocks "
        + latency.summary_ms(latency.entry_ms(table, k) for k in entries if k.startswith("block")))


if __name__ == "__main__":
  cli.run(main)
