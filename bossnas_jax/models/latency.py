"""Latency of a searched BossNet on the present device, part by part (docs/method.md#latency).

A searched BossNet is a fixed stem and head plus the layers each block's choice turns into
(`cost.searched_block_layers`: the same decomposition that makes MAdds add up over blocks). A
latency table times every such part once, on the device the network will run on:

  stem                 conv 7x7/2, BN, act, max-pool at the table's resolution
  block{b}_in{s}_{p}   the BossNet blocks that block b's path p becomes when it takes input at
                       scale s (with the empty stages it skips)
  head                 global average pool and classifier

Each part is compiled with `jax.jit` (inference mode, the table's batch and dtype), warmed up,
then timed `repeats` times with `block_until_ready`; an entry holds {count, mean, std, median,
min} in milliseconds. A network's predicted latency is the sum of its parts' `STATISTIC`
(`predict`), plus a constant per network once `benchmarks/latency_model.py --calibrate` has fitted
one on whole networks; whether that sum is right is measured by that benchmark. The table
is a JSON file with a header that names what it was measured for; a search refuses a table made
for another setting.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bossnas_jax import search_space as ss
from bossnas_jax.infra import errors, files, parallel
from bossnas_jax.models import bossnet, cost
from bossnas_jax.models import bossnet_spec as bs

FORMAT = "bossnas_jax/latency-v2"  # v1 had no median or min
# The statistic of an entry that predictions add: the fastest of the repeats, which a shared
# machine reproduces best (docs/results.md#latency).
STATISTIC = "min"
STATISTICS = ("mean", "median", "min")
# Header field of the per-network constant fitted on whole networks (latency_model --calibrate).
CONSTANT = "network_constant_ms"
# Header fields a search must match (the rest describe the device and the timing).
SETTINGS = ("resolution", "batch", "dtype", "width_multiplier", "num_classes", "dim_head")


class LatencyError(errors.UserError, ValueError):
  """A latency table that is missing, malformed, incomplete or made for other settings."""


@dataclasses.dataclass(frozen=True)
class TableSettings:
  """What a table is measured for: the searched BossNet's size and how it is run."""

  resolution: int = 224
  batch: int = 1
  dtype: str = "float32"
  width_multiplier: float = 1.0
  num_classes: int = 1000
  dim_head: int = 64

  def __post_init__(self):
    bs.check_resolution(self.resolution)
    if self.batch < 1:
      raise LatencyError(f"batch={self.batch}: time at least 1 image per call.")
    if self.dtype not in parallel.DTYPES:
      raise LatencyError(f"dtype={self.dtype!r}: expected one of {', '.join(parallel.DTYPES)}.")

  @property
  def compute_dtype(self):
    return parallel.DTYPES[self.dtype]

  def options(self) -> dict:
    """The BossNet options (beyond the searched ones) of the networks the table is for."""
    return {"width_multiplier": self.width_multiplier, "num_classes": self.num_classes,
            "dim_head": self.dim_head}

  def network(self, arch: str | ss.Architecture = ss.BOSSNET_T0) -> bs.BossNetConfig:
    """The searched BossNet of `arch` (by default T0's encoding: only the options matter for a
    part)."""
    return bs.config_from_architecture(arch, **self.options())


def entry_name(block: int, in_scale: int, path: ss.Path) -> str:
  return f"block{block}_in{ss.SCALE_NAMES[in_scale]}_{ss.format_path(path)}"


def part_names() -> list[str]:
  """Every part of the space's searched BossNets: the stem, every (block, input scale, path),
  the head (in the order a table is built)."""
  names = ["stem"]
  for b in range(ss.NUM_BLOCKS):
    for s in ss.input_scales(b):
      names += [entry_name(b, s, p) for p in ss.candidates(b, s)]
  return names + ["head"]


# ------------------------------------------------------------------------------------------------
# The parts as networks.


class _Part(nn.Module):
  """One timed part of a searched BossNet, built from BossNet's own layer code."""

  config: bs.BossNetConfig
  specs: tuple[bs.BlockSpec, ...] = ()
  kind: str = "blocks"  # 'stem', 'blocks' or 'head'
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.kind == "stem":
      return bossnet.stem(x, self.config, self.dtype, train=False)
    if self.kind == "head":
      return bossnet.head(x, self.config)
    return bossnet.blocks(x, self.specs, self.config, self.dtype, train=False)


def part(name: str, settings: TableSettings) -> tuple[_Part, tuple[int, ...]]:
  """The module of one part and the shape of its input."""
  cfg, n, r, dtype = settings.network(), settings.batch, settings.resolution, settings.compute_dtype
  if name == "stem":
    return _Part(cfg, kind="stem", dtype=dtype), (n, r, r, 3)
  if name == "head":
    side = cost.searched_output_side(r, **settings.options())
    return _Part(cfg, kind="head"), (n, side, side, cfg.num_features)
  block, in_scale, path = _parse_entry(name)
  layers = cost.searched_block_layers(block, in_scale, path, r, **settings.options())
  # Unique module names (the decomposition numbers every non-first block of a stage 1).
  specs = tuple(dataclasses.replace(spec, name=f"part{k}") for k, (spec, _) in enumerate(layers))
  side = layers[0][1]
  return _Part(cfg, specs, dtype=dtype), (n, side, side, specs[0].in_channels)


def _parse_entry(name: str) -> tuple[int, int, ss.Path]:
  try:
    head, scale, path = name.split("_")
    block = int(head.removeprefix("block"))
    in_scale = ss.SCALE_NAMES.index(scale.removeprefix("in"))
    return block, in_scale, ss.parse_path(path, block, in_scale)
  except (ValueError, ss.SearchSpaceError):
    raise LatencyError(f"latency table entry {name!r} is not 'stem', 'head' or "
                       "block{b}_in{scale}_{path}.") from None


# ------------------------------------------------------------------------------------------------
# Timing.


def time_fn(fn: Callable, *args, repeats: int = 20, warmup: int = 3) -> dict[str, float]:
  """{count, mean, std, median, min} in ms of `fn(*args)` (synchronised with block_until_ready)
  after `warmup` untimed calls (the first compiles). A shared machine's slow moments (another
  process, a VM neighbour) lengthen some calls a lot; they move the mean most, the min least."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(1e3 * (time.perf_counter() - t0))
  return {"count": repeats, "mean": statistics.fmean(times),
          "std": statistics.stdev(times) if repeats > 1 else 0.0,
          "median": statistics.median(times), "min": min(times)}


def time_part(name: str, settings: TableSettings, repeats: int = 20, warmup: int = 3,
              seed: int = 0) -> dict[str, float]:
  module, shape = part(name, settings)
  key = jax.random.key(seed)
  x = jax.random.normal(key, shape, jnp.float32).astype(settings.compute_dtype)
  return time_fn(jax.jit(module.apply), random_variables(module.init, key, x), x,
                 repeats=repeats, warmup=warmup)


def random_variables(init: Callable, key, *args):
  """Variables shaped as `init` makes them, without compiling the initialisation: kernels drawn
  with variance 1/fan-in, BN at identity (scale and variance 1, bias and mean 0), so activations
  keep their scale through a whole network."""
  shapes = jax.eval_shape(init, key, *args)
  leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
  keys = jax.random.split(key, len(leaves))

  def fill(path, s, k):
    name = str(getattr(path[-1], "key", path[-1]))
    if name in ("scale", "var"):
      return jnp.ones(s.shape, s.dtype)
    if name in ("bias", "mean") or len(s.shape) < 2:
      return jnp.zeros(s.shape, s.dtype)
    fan_in = max(1, int(np.prod(s.shape[:-1])))
    return (jax.random.normal(k, s.shape, jnp.float32) / np.sqrt(fan_in)).astype(s.dtype)

  return jax.tree.unflatten(tree, [fill(p, s, k) for (p, s), k in zip(leaves, keys)])


def header(settings: TableSettings, repeats: int, warmup: int) -> dict:
  device = jax.devices()[0]
  return {"format": FORMAT, **dataclasses.asdict(settings), "repeats": repeats,
          "warmup": warmup, "backend": jax.default_backend(), "device_kind": device.device_kind,
          "device_count": jax.device_count(), "jax_version": jax.__version__,
          "host": platform.node()}


def build_table(path: str, settings: TableSettings, *, repeats: int = 20, warmup: int = 3,
                names: Iterable[str] | None = None, save_every: int = 10,
                progress: Callable[[Iterable], Iterable] = lambda x: x) -> dict:
  """Times every part not yet in the table at `path` (a killed run keeps its finished entries)
  and writes the table there; returns it. The table is saved every `save_every` entries."""
  head = header(settings, repeats, warmup)
  table = load_table(path) if files.exists(path) else {"header": head, "entries": {}}
  check_settings(table["header"], settings, path)
  todo = [n for n in (names or part_names()) if n not in table["entries"]]
  for k, name in enumerate(progress(todo)):
    t0 = time.perf_counter()
    entry = time_part(name, settings, repeats, warmup)
    entry["seconds"] = round(time.perf_counter() - t0, 2)  # to build it, compilation included
    table["entries"][name] = entry
    if (k + 1) % save_every == 0 or k + 1 == len(todo):
      files.write_json(path, table, indent=1)
  if not todo:
    files.write_json(path, table, indent=1)
  return table


# ------------------------------------------------------------------------------------------------
# Reading and predicting.


def load_table(path: str) -> dict:
  try:
    table = files.read_json(path)
  except FileNotFoundError:
    raise LatencyError(f"latency table {path} does not exist; build it with "
                       "launch/latency_table.py.") from None
  except (OSError, ValueError) as e:
    raise LatencyError(f"latency table {path} is not readable JSON ({e}).") from None
  head = table.get("header") if isinstance(table, dict) else None
  found = head.get("format") if isinstance(head, dict) else None
  if found == "bossnas_jax/latency-v1":
    raise LatencyError(f"latency table {path} was made by an older bossnas_jax (latency-v1: "
                       "means only, no medians or minima); build it again with "
                       "launch/latency_table.py into a new file.")
  if found != FORMAT:
    raise LatencyError(f"{path} is not a latency table ({FORMAT}); build one with "
                       "launch/latency_table.py.")
  return table


def check_settings(head: Mapping, settings: TableSettings, path: str) -> None:
  """A table made for other settings than `settings` is refused, naming every field that differs."""
  want = dataclasses.asdict(settings)
  diff = [f"{k} {head.get(k)!r} in the table, {want[k]!r} here" for k in SETTINGS
          if head.get(k) != want[k]]
  if diff:
    raise LatencyError(f"latency table {path} was measured for other settings: "
                       + "; ".join(diff) + ". Build a table for these settings "
                       "(launch/latency_table.py), or search with the table's.")


def entry_ms(table: Mapping, name: str, path: str = "the latency table",
             statistic: str = STATISTIC) -> float:
  try:
    return float(table["entries"][name][statistic])
  except KeyError:
    raise LatencyError(f"{path} has no entry {name!r}; finish it with launch/latency_table.py "
                       "(it resumes).") from None


def fixed_ms(table: Mapping, path: str = "the latency table", statistic: str = STATISTIC,
             calibrated: bool = True) -> float:
  """What every network of the table pays: the stem, the head and (`calibrated`) the constant
  that `benchmarks/latency_model.py --calibrate` fitted on whole networks and stored in the
  header (0 before that)."""
  constant = float(table.get("header", {}).get(CONSTANT, 0.0)) if calibrated else 0.0
  return (entry_ms(table, "stem", path, statistic) + entry_ms(table, "head", path, statistic)
          + constant)


def predict(table: Mapping, arch: ss.Architecture | str, path: str = "the latency table",
            statistic: str = STATISTIC, calibrated: bool = True) -> float:
  """Predicted latency (ms) of the searched BossNet of `arch`: the sum of its parts, plus the
  table's fitted constant if it has one and `calibrated`."""
  if isinstance(arch, str):
    arch = ss.parse_architecture(arch)
  total = fixed_ms(table, path, statistic, calibrated)
  for b, p in enumerate(arch.paths):
    total += entry_ms(table, entry_name(b, arch.input_scale(b), p), path, statistic)
  return total


def time_network(arch: ss.Architecture | str, settings: TableSettings, repeats: int = 20,
                 warmup: int = 3) -> dict[str, float]:
  """Measured latency of a whole searched BossNet, timed as the parts are."""
  model = bossnet.BossNet(settings.network(arch), settings.compute_dtype)
  key = jax.random.key(0)
  x = jax.random.normal(key, (settings.batch, settings.resolution, settings.resolution, 3))
  variables = random_variables(functools.partial(model.init, train=False), key, x)
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return time_fn(fn, variables, x, repeats=repeats, warmup=warmup)


def summary_ms(values: Iterable[float]) -> str:
  v = np.asarray(list(values))
  return f"{v.mean():.3f} ms (min {v.min():.3f}, max {v.max():.3f})"
