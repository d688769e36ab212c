"""Test set-up: 8 simulated CPU devices and JAX's persistent compilation cache.

XLA_FLAGS must be set before jax is imported anywhere, which is why this lives in conftest.
"""

import os
import uuid

import pytest

# On 2 shared cores a simulated device can reach a collective long after the others (its thread
# waits behind a cold compile); XLA:CPU aborts the process after 40 s by default, so give it more.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=900 "
                      "--xla_cpu_collective_timeout_seconds=900")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


from bossnas_jax.infra import compile_cache  # noqa: E402

compile_cache.enable(
    os.environ.get("BOSSNAS_TEST_CACHE",
                   os.path.join(os.path.dirname(__file__), os.pardir, ".jax_cache")))


# ------------------------------------------------------------------------------------------------
# A Cloud Storage bucket for the gs:// workdir tests (gcs_emulator.py: no network here).


@pytest.fixture(scope="session")
def gcs_bucket():
  """'gs://bossnas-test', served by an emulator in this process for the whole session."""
  import importlib.util
  for package in ("gcsfs", "gcp_storage_emulator"):  # (gcsfs must not be imported before.)
    if importlib.util.find_spec(package) is None:
      pytest.skip(f"{package} is missing: pip install -e '.[test]'")
  import gcs_emulator

  with gcs_emulator.serving(bucket="bossnas-test") as bucket:
    yield bucket


@pytest.fixture
def bucket_dir(gcs_bucket, request):
  """A fresh gs:// folder for one test."""
  name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
  return f"{gcs_bucket}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def without_gcsfs():
  """Runs Python code in a child process where gcsfs cannot be imported, as if the gcs extra were
  not installed (this process may have imported it already); returns what the code printed."""
  import subprocess
  import sys

  def run(code: str) -> str:
    code = 'import sys\nsys.modules["gcsfs"] = None\n' + code
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout

  return run
