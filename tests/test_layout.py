"""The package reads like the method: each stage imports only earlier stages (and infra), and no
module is longer than a reader can hold."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir, "bossnas_jax")
# The stages in the order of the method (docs/method.md); infra serves all of them.
STAGES = ["infra", "search_space", "models", "convert", "data", "train", "rating", "search",
          "retrain", "ranking_quality", "main_job"]
MAX_LINES = 500


def _modules():
  for dirpath, _, names in os.walk(ROOT):
    for name in sorted(names):
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, ROOT)
        yield rel, path


def _stage(dotted: str) -> str:
  """'bossnas_jax.models.cost' -> 'models'; 'bossnas_jax.main_job' -> 'main_job'."""
  parts = dotted.split(".")
  return parts[1] if len(parts) > 1 else ""


def _imports(path: str):
  tree = ast.parse(open(path).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bossnas_jax"):
      if node.module == "bossnas_jax":
        yield from (f"bossnas_jax.{a.name}" for a in node.names)
      else:
        yield node.module
    elif isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.startswith("bossnas_jax"))


def test_no_module_imports_a_later_stage():
  late = []
  for rel, path in _modules():
    own = rel.split(os.sep)[0].removesuffix(".py")
    if own not in STAGES:
      continue  # the package's __init__
    for target in _imports(path):
      other = _stage(target)
      if other in STAGES and STAGES.index(other) > STAGES.index(own):
        late.append(f"{rel} imports {target}")
    if own == "infra":  # infra knows nothing of the method (errors are its own)
      late += [f"{rel} imports {t}" for t in _imports(path) if _stage(t) not in ("infra", "")]
  assert not late, "imports of a later stage:\n" + "\n".join(late)


def test_every_module_belongs_to_a_stage():
  top = {rel.split(os.sep)[0].removesuffix(".py") for rel, _ in _modules()}
  assert top - {"__init__"} <= set(STAGES), sorted(top - set(STAGES) - {"__init__"})


@pytest.mark.parametrize("rel,path", list(_modules()))
def test_module_is_short(rel, path):
  n = sum(1 for _ in open(path))
  assert n <= MAX_LINES, f"{rel} has {n} lines (at most {MAX_LINES}): split it by what it holds."


def _readme() -> str:
  with open(os.path.join(ROOT, os.pardir, "README.md")) as f:
    return f.read()


def test_readme_layout_names_every_package():
  layout = _readme().split("## Layout", 1)[1].split("\n## ", 1)[0]
  for stage in STAGES:
    name = f"bossnas_jax/{stage}.py" if os.path.isfile(os.path.join(ROOT, f"{stage}.py")) \
        else f"bossnas_jax/{stage}/"
    assert name in layout, f"the README's layout does not name {name}"


def test_ci_runs_exactly_the_readme_test_command():
  readme = _readme()
  blocks = readme.split("```bash\n")
  test_command = next(b.split("\n```", 1)[0] for b in blocks[1:4] if "pytest" in b)
  with open(os.path.join(ROOT, os.pardir, ".ci", "run")) as f:
    ci = [line for line in f.read().splitlines() if line and not line.startswith("#")]
  assert ci[-1] == test_command.strip()
