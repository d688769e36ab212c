"""architecture.json: the searched architecture as the search exports it, and the BossNet it
becomes (docs/method.md#search-and-export). Export writes it; rate, retrain and the benchmarks read
it here.
"""

from __future__ import annotations

from bossnas_jax import search_space as ss
from bossnas_jax.infra import errors, files
from bossnas_jax.models import bossnet_spec as bs

ARCHITECTURE_JSON = "architecture.json"


class ArchitectureFileError(errors.UserError, ValueError):
  """An architecture.json that is missing, unreadable or inconsistent."""


def load_architecture(path: str) -> tuple[ss.Architecture, dict]:
  """Reads an architecture.json back: the Architecture and the record, checked for agreement."""
  try:
    record = files.read_json(path)
  except FileNotFoundError:
    raise ArchitectureFileError(
        f"{path} does not exist; run launch/search.py --workdir DIR first.") from None
  except (OSError, ValueError) as e:  # JSON or UTF-8 decoding
    raise ArchitectureFileError(f"{path} is not readable JSON ({e}).") from None
  if not isinstance(record, dict):
    raise ArchitectureFileError(
        f"{path} is not an architecture.json: it holds a JSON {type(record).__name__}, not an "
        "object with an 'architecture' string such as launch/search.py writes.")
  try:
    arch = ss.parse_architecture(record["architecture"])
  except (KeyError, TypeError, ss.SearchSpaceError) as e:
    raise ArchitectureFileError(f"{path}: no valid 'architecture' ({e}).") from None
  expect = {"paths": [ss.format_path(p) for p in arch.paths], "ops": list(arch.ops),
            "stage_encoding": [list(s) for s in arch.stage_encoding()]}
  for k, v in expect.items():
    if k in record and record[k] != v:
      raise ArchitectureFileError(
          f"{path}: '{k}' {record[k]!r} disagrees with architecture {arch} ({v!r}); was the file "
          "edited by hand? Re-export it.")
  return arch, record


def bossnet_config(record: dict, **overrides) -> bs.BossNetConfig:
  """The BossNetConfig of an architecture.json record (for retraining or costing)."""
  options = {**bs.SEARCHED_OPTIONS, **record.get("bossnet", {}), **overrides}
  return bs.config_from_architecture(record["architecture"], **options)
