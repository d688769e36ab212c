"""What every launch script shares: a user's mistake is one line, a bug keeps its traceback.

    if __name__ == "__main__":
      cli.run(main)          # absl scripts (flags and --config.a.b=value overrides)

`run` parses the absl flags and calls `main`. A bad flag, an unknown `--config.a.b` field (with
the closest valid fields) or one of the project's own errors (`errors.UserError`, whose message
names the input and the fix) prints `PROG: error: MESSAGE` on stderr and exits with status 1 (2 for
a bad command line); `--help` prints the script's doc and flags and exits 0. Set
BOSSNAS_TRACEBACK=1 to see the traceback of a project error (for a bug report); any other exception
keeps its traceback. Ctrl-C prints one line saying that rerunning the same command resumes.
On the CPU backend it also gives XLA's collectives a longer limit before the job starts
(`parallel.default_cpu_collective_timeouts`).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

from absl import app, flags, logging

from bossnas_jax.infra import errors, parallel

TRACEBACK_ENV = "BOSSNAS_TRACEBACK"
USAGE_STATUS, ERROR_STATUS, INTERRUPTED_STATUS = 2, 1, 130
_HELP = ("-h", "--help", "--helpshort", "--helpfull", "-?")


def program_name() -> str:
  """'launch/x.py' for a launch script, 'python -m bossnas_jax.a.b' for a module of the package,
  else the file name the interpreter ran."""
  path = sys.argv[0] if sys.argv and sys.argv[0] else "bossnas_jax"
  parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
  name = os.path.basename(path)
  package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  relative = os.path.relpath(os.path.abspath(path), os.path.dirname(package))
  if relative.startswith("bossnas_jax" + os.sep) and relative.endswith(".py"):
    return "python -m " + relative[:-3].replace(os.sep, ".").removesuffix(".__main__")
  return f"{parent}/{name}" if parent == "launch" else name


def say_error(message, prog: str | None = None) -> None:
  """Prints `PROG: error: MESSAGE` on stderr."""
  print(f"{prog or program_name()}: error: {message}", file=sys.stderr, flush=True)


def fail(message: str, status: int = ERROR_STATUS, prog: str | None = None):
  """Prints `PROG: error: MESSAGE` on stderr and exits with `status`."""
  say_error(message, prog)
  sys.exit(status)


def show_traceback() -> bool:
  return os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def report(error: BaseException, prog: str) -> int:
  """For an argparse command (`python -m ...`) that returns its status: prints a project error as
  `PROG: error: MESSAGE` and returns ERROR_STATUS (re-raises it under BOSSNAS_TRACEBACK=1)."""
  if show_traceback():
    raise error
  say_error(error, prog)
  return ERROR_STATUS


# ------------------------------------------------------------------------------------------------
# Flags.


def config_fields(config, prefix: str = "") -> Iterator[str]:
  """Every leaf field of a ConfigDict as a dotted path ('train.base_lr', ...)."""
  for key in sorted(config.keys()):
    value = config[key]
    if hasattr(value, "keys") and callable(value.keys):
      yield from config_fields(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"


_MISSING = object()


def _field(config, path: str):
  """The value (or section) at a dotted path of a ConfigDict, or _MISSING."""
  node = config
  for part in path.split("."):
    if not (hasattr(node, "keys") and part in node.keys()):
      return _MISSING
    node = node[part]
  return node


def unknown_field_message(config, path: str) -> str:
  """One line for `--config.PATH=...` where the config has no field PATH."""
  parent, _, leaf = path.rpartition(".")
  section = _field(config, parent) if parent else _MISSING
  if hasattr(section, "keys"):
    names = sorted(section.keys())
    close = [f"{parent}.{m}" for m in difflib.get_close_matches(leaf, names, n=3, cutoff=0.6)]
    where = f" The fields of {parent}: {', '.join(names)}."
  else:
    close = difflib.get_close_matches(path, list(config_fields(config)), n=3, cutoff=0.6)
    where = f" Its sections: {', '.join(sorted(config.keys()))}."
  hint = f" Did you mean {' or '.join(close)}?" if close else ""
  return f"--config.{path}: the config has no field {path!r}.{hint}{where}"


def _loaded_config(argv: list[str]):
  """The config that --config names, loaded on its own (without the overrides), or None."""
  spec = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      spec = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
  if not spec:
    return None
  path, colon, arg = spec.partition(":")
  try:
    loader = importlib.util.spec_from_file_location("_bossnas_cli_config", path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module.get_config(arg) if colon else module.get_config()
  except Exception:  # noqa: BLE001  (the flag parser reports a config that does not load)
    return None


def _bad_override(argv: list[str]) -> str | None:
  config = _loaded_config(argv)
  if config is None:
    return None
  for arg in argv[1:]:
    match = re.match(r"--config\.([\w.]+)(=|$)", arg)
    if match and _field(config, match.group(1)) is _MISSING:
      return unknown_field_message(config, match.group(1))
  return None


def _print_help() -> None:
  doc = (sys.modules["__main__"].__doc__ or "").strip()
  print(doc + "\n" if doc else "", flush=True)
  module_help = flags.FLAGS.main_module_help()
  print(module_help or "", flush=True)
  if "config" in flags.FLAGS:
    print("\n  --config.FIELD=VALUE: overrides one field of the config, e.g. "
          "--config.train.epochs=2 --config.data.data_dir=/data/tfds (any field of the "
          "config file's get_config()).", flush=True)
  print("\n  Absl's own flags: --helpfull. BOSSNAS_TRACEBACK=1 shows the traceback of an error.",
        flush=True)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one line per mistake (see the module doc)."""
  if any(a in _HELP for a in argv[1:]) and "--helpfull" not in argv[1:]:
    flags.FLAGS.mark_as_parsed()
    _print_help()
    sys.exit(0)
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS:
      try:
        flags.FLAGS["config"].value.keys()  # config_flags loads the file lazily.
      except OSError as e:  # A missing or unreadable file.
        fail(f"--config: cannot load the config file: {_last_line(e.__cause__ or e)} Check the "
             "path (configs/hytra.py, configs/retrain.py, or a retrain_config.py a search wrote).",
             USAGE_STATUS)
    return rest
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    if show_traceback():
      raise
    fail(_bad_override(argv) or _last_line(e) + " Pass --help to see the flags.", USAGE_STATUS)


def _last_line(error: BaseException) -> str:
  """The message of a flag error, without the traceback text absl wraps around a config file's."""
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  text = lines[-1] if lines else type(error).__name__
  return text if text.endswith((".", "?", "!")) else text + "."


def run(main: Callable[[list[str]], Any]) -> None:
  """absl's app.run(main) with the error handling of the module doc."""

  def guarded(argv: list[str]):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # TFDS and Orbax log every file they open at INFO.
    try:
      status = main(argv)
    except errors.Interrupted as e:
      fail(str(e), INTERRUPTED_STATUS)
    except errors.UserError as e:
      if show_traceback():
        raise
      fail(str(e))
    except KeyboardInterrupt:
      fail("interrupted. Finished checkpoints are kept: rerun the same command to resume.",
           INTERRUPTED_STATUS)
    if isinstance(status, int) and status:
      sys.exit(status)

  parallel.default_cpu_collective_timeouts()
  app.run(guarded, flags_parser=parse_flags)
