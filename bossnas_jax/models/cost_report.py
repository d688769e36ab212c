"""The reference cost figures (docs/method.md#figures) and the cost of any one BossNet, in both
conventions (`cost.py` has the formulas):

    python -m bossnas_jax.models.cost_report                      # T0, T1 and the supernet
    python -m bossnas_jax.models.cost_report --arch 5433-3230-0010-0000 [--resolution 256]
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence

from bossnas_jax import search_space as ss
from bossnas_jax.infra import cli, errors
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.models import cost

# The acceptance rows of docs/method.md#figures: (label, model, resolution).
ACCEPTANCE_ROWS = (
    ("T0 w/o SE @224", "bossnet_t0_nose", 224),
    ("T0 @224", "bossnet_t0", 224),
    ("T0^ @288", "bossnet_t0", 288),
    ("T1 @224", "bossnet_t1", 224),
    ("T1^ @256", "bossnet_t1", 256),
)


@functools.cache
def _table() -> list[tuple[str, cost.Cost, cost.Cost]]:
  return [(label, cost.bossnet_cost(m, r, "official"), cost.bossnet_cost(m, r, "true"))
          for label, m, r in ACCEPTANCE_ROWS]


def report() -> str:
  lines = ["BossNet (per image)", f"{'model':<16}{'official MAdds':>16}{'official params':>17}"
           f"{'true MAdds':>16}{'true params':>14}"]
  for label, off, tru in _table():
    lines.append(f"{label:<16}{off.madds:>16,}{off.params:>17,}{tru.madds:>16,}{tru.params:>14,}")
  dims = ss.Dims()
  lines += ["", "HyTra supernet (full size, 224)",
            f"backbone params: official {cost.supernet_params(dims, 'official'):,}, "
            f"bossnas_jax {cost.supernet_params(dims, 'true'):,} (without the never-run `_d` "
            "branches of block 0, layer 0)"]
  for b in range(ss.NUM_BLOCKS):
    lines.append(f"  block {b}: official {cost.block_params(dims, b, 'official'):,}, "
                 f"bossnas_jax {cost.block_params(dims, b):,}")
  lines.append("per candidate, non-first layer of block 0 (both entries):")
  lines.append("  " + ", ".join(f"{ss.OPS[o].name} {cost.op_params(dims, 0, 1, o):,}"
                                for o in ss.ops_in_block(0)))
  lines.append(f"projector {cost.projector_cost(dims).params:,} (fix_channels "
               f"{cost.fix_channels_params(dims):,}), predictor {cost.predictor_cost().params:,}")
  t0 = ss.parse_architecture(ss.BOSSNET_T0)
  paths = []
  for b, p in enumerate(t0.paths):
    c = cost.path_cost(dims, b, t0.input_scale(b), p)
    paths.append(f"block {b} '{ss.format_path(p)}' {c.madds:,} MAdds / {c.params:,} params")
  lines.append("T0 paths in the supernet: " + "; ".join(paths))
  return "\n".join(lines)


def network_report(arch: str, resolution: int = 224, width_multiplier: float = 1.0,
                   num_classes: int = 1000, dim_head: int = 64) -> str:
  """MAdds and params of one BossNet (a named model or an architecture string) in both
  conventions."""
  config = bs.resolve_config(arch, width_multiplier=width_multiplier, num_classes=num_classes,
                             dim_head=dim_head)
  bs.check_resolution(resolution)
  true, off = (cost.bossnet_cost(config, resolution, c) for c in ("true", "official"))
  return (f"{arch} at {resolution}x{resolution}, width x{width_multiplier:g}, {num_classes} "
          f"classes, dim_head {dim_head}:\n"
          f"  true convention:     {true.madds:>15,} MAdds {true.params:>12,} params\n"
          f"  official counter:    {off.madds:>15,} MAdds {off.params:>12,} params")


def main(argv: Sequence[str] | None = None) -> int:
  """Prints the reference table; with --arch, one network."""
  p = argparse.ArgumentParser(
      prog="python -m bossnas_jax.models.cost_report",
      description="Without --arch: the reference table (T0, T1 and the supernet). With --arch: "
                  "the MAdds and parameters of one BossNet in both conventions.")
  p.add_argument("--arch", help="bossnet_t0, bossnet_t0_nose, bossnet_t1 or an architecture "
                 "string such as 5433-3230-0010-0000.")
  p.add_argument("--resolution", type=int, default=224, help="Input side (a multiple of 32).")
  p.add_argument("--width_multiplier", type=float, default=1.0, help="Channels times this.")
  p.add_argument("--num_classes", type=int, default=1000, help="Classifier outputs.")
  p.add_argument("--dim_head", type=int, default=64, help="Attention head width (8 in the demo).")
  args = p.parse_args(argv)
  if args.arch is None:
    if (args.resolution, args.width_multiplier, args.num_classes, args.dim_head) != (
        224, 1.0, 1000, 64):
      p.error("--resolution, --width_multiplier, --num_classes and --dim_head need --arch.")
    print(report())
    return 0
  try:
    print(network_report(args.arch, args.resolution, args.width_multiplier, args.num_classes,
                         args.dim_head))
  except (errors.UserError, ValueError) as e:
    return cli.report(e, p.prog)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
