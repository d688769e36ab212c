"""The command line of the conversion:

    python -m bossnas_jax.convert import bossnet_t0.pth out/t0 --model bossnet_t0
    python -m bossnas_jax.convert import search.pth out/supernet --model supernet
    python -m bossnas_jax.convert export out/t0 t0.npz          # Flax -> state_dict arrays

`import` reads an official state_dict (`state_dicts.load_state_dict`), converts it and writes a
single-model checkpoint (`models/checkpoint.py`); `export` writes one back as an .npz of official
keys.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from bossnas_jax import search_space as ss
from bossnas_jax.convert import keys
from bossnas_jax.convert import state_dicts as sd_lib
from bossnas_jax.infra import cli, errors
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.models import checkpoint

SUPERNET = "supernet"


def convert_file(path: str, out_dir: str, model: str, *, key: str | None = None,
                 allow_pickle: bool = False, dim_head: int = 64,
                 **config) -> sd_lib.ConversionReport:
  """Reads `path`, imports it as `model` ('supernet', a BossNet name / architecture) and saves a
  verified Orbax checkpoint in `out_dir`. Raises ConversionError with the full report on any
  unmatched, missing or mis-shaped key (nothing is written then)."""
  sd = sd_lib.load_state_dict(path, key=key, allow_pickle=allow_pickle)
  meta: dict[str, Any] = {"source": os.path.abspath(path)}
  if model == SUPERNET:
    sizes = sd_lib.infer_supernet_sizes(sd, dim_head)
    variables, report = sd_lib.import_supernet(sd, sizes, strict=False)
    meta.update(kind=SUPERNET, sizes=sizes.to_dict())
  else:
    if "num_classes" not in config and "fc.weight" in sd:
      config["num_classes"] = int(np.shape(sd["fc.weight"])[0])
    if "width_multiplier" not in config and "conv1.weight" in sd:
      config["width_multiplier"] = np.shape(sd["conv1.weight"])[0] / ss.BASE_STEM_CHANNELS
    cfg = bs.resolve_config(model, dim_head=dim_head, **config)
    variables, report = sd_lib.import_bossnet(sd, cfg, strict=False)
    meta.update(kind="bossnet", config=cfg.to_dict())
  report.raise_if_errors()
  meta["report"] = report.to_dict()
  checkpoint.save(out_dir, variables, meta)
  return report


def export_checkpoint(ckpt_dir: str, out_path: str) -> int:
  """Converted (or native) checkpoint -> an .npz of official state_dict keys. Returns the number
  of arrays written."""
  variables, meta = checkpoint.load(ckpt_dir)
  if meta.get("kind") == "bossnet":
    sd = sd_lib.export_bossnet(variables, bs.BossNetConfig.from_dict(meta["config"]))
  else:
    sd = sd_lib.export_supernet(variables, keys.SupernetSizes.from_dict(meta["sizes"]))
  sd_lib.save_npz(sd, out_path)
  return len(sd)


# ------------------------------------------------------------------------------------------------
# Command line.


PROG = "python -m bossnas_jax.convert"


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=PROG,
                              description=sd_lib.__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  imp = sub.add_parser("import", help="official state_dict (.pth / .npz) -> Orbax checkpoint")
  imp.add_argument("input")
  imp.add_argument("output", help="directory of the Orbax checkpoint to write")
  imp.add_argument("--model", required=True,
                   help="bossnet_t0 | bossnet_t0_nose | bossnet_t1 | an architecture such as "
                        "5433-3230-0010-0000 | supernet")
  imp.add_argument("--act", choices=bs.ACTIVATIONS, help="override the activation")
  imp.add_argument("--se", choices=("yes", "no"), help="override squeeze-excite")
  imp.add_argument("--last-stride", type=int, choices=(1, 2))
  imp.add_argument("--num-classes", type=int, help="default: from fc.weight")
  imp.add_argument("--dim-head", type=int, default=64)
  imp.add_argument("--key", help="entry of the checkpoint holding the state_dict "
                                 "(default: state_dict / model)")
  imp.add_argument("--allow-pickle", action="store_true",
                   help="torch.load without weights_only (trusted files only)")
  exp = sub.add_parser("export", help="converted checkpoint -> .npz of official keys")
  exp.add_argument("checkpoint")
  exp.add_argument("output", help=".npz path")
  return p


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.command == "export":
      n = export_checkpoint(args.checkpoint, args.output)
      print(f"wrote {n} arrays to {args.output}")
      return 0
    config: dict[str, Any] = {}
    if args.act:
      config["act"] = args.act
    if args.se:
      config["se"] = args.se == "yes"
    if args.last_stride:
      config["last_stride"] = args.last_stride
    if args.num_classes:
      config["num_classes"] = args.num_classes
    report = convert_file(args.input, args.output, args.model, key=args.key,
                          allow_pickle=args.allow_pickle, dim_head=args.dim_head, **config)
  except errors.UserError as e:  # Ours name the file and the fix: no traceback.
    return cli.report(e, PROG)
  print(report.summary())
  if args.se == "no" and not args.act and args.model != SUPERNET:
    print("note: --se no kept the activation of --model; the official networks without SE "
          "(T0-nose) use ReLU: convert with --act relu if this checkpoint does.")
  print(f"saved {args.output}")
  return 0
