"""2 processes x 4 CPU devices (jax.distributed on localhost) train like 1 process x 8 devices.

Issue 6: multi-host through jax.distributed.initialize(), per-host input slices assembled into
global arrays, all hosts drawing the same paths. Block 0 of a tiny config is trained for one
optimizer step by 2 processes and by this process over 8 simulated devices; the parameters must
agree (up to the summation order of cross-device sums), the same candidates must be updated, and
both processes must hold bit-identical replicas.

A second test runs the whole main job on 2 processes. Both take about 10 minutes on 2 cores (most
of it compiling, in 3 processes), so they run on request:
    BOSSNAS_MULTIHOST=1 pytest tests/test_multihost.py
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from multihost_worker import config_for, final_tree
from train_utils import prepare_data

from bossnas_jax.train import loop

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _xla_cpu_threads() -> int:
  """The size of XLA:CPU's intra-op thread pool in this process: the larger of the CPU count
  (or $NPROC) and the number of local devices.

  Convolutions split their work by that size, so their float results depend on it: a process
  with 4 simulated devices on 2 cores computes the same convolution on the same inputs a few
  ulps differently from a process with 8 (found with this test), and batch normalisation over
  2 images per device amplifies that to visibly different weights after one step. The workers
  are given the same pool size through $NPROC, which XLA reads."""
  cpus = int(os.environ.get("NPROC") or len(os.sched_getaffinity(0)))
  return max(cpus, jax.local_device_count())


def _run_workers(*args: str, timeout: int = 900) -> list[str]:
  """Runs multihost_worker.py with `args` as 2 processes x 4 CPU devices; returns their logs."""
  port = _free_port()
  cache = os.environ.get("BOSSNAS_TEST_CACHE", os.path.join(HERE, os.pardir, ".jax_cache"))
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", NPROC=str(_xla_cpu_threads()),
               XLA_FLAGS="--xla_force_host_platform_device_count=4 "
               "--xla_cpu_collective_call_terminate_timeout_seconds=900 "
               "--xla_cpu_collective_timeout_seconds=900",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid), BOSSNAS_TEST_CACHE=os.path.abspath(cache))
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(HERE, "multihost_worker.py"), *args], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=timeout)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  return logs


_OPT_IN = pytest.mark.skipif(os.environ.get("BOSSNAS_MULTIHOST") != "1",
                             reason="takes minutes; set BOSSNAS_MULTIHOST=1 to run it")


@_OPT_IN
def test_two_processes_match_one_process(tmp_path):
  assert jax.device_count() == 8
  data_dir = prepare_data(str(tmp_path / "data"))
  out = str(tmp_path / "multi")
  logs = _run_workers(data_dir, str(tmp_path / "multi_run"), out)
  assert "block 0" in logs[0]
  workers = [dict(np.load(f"{out}.{pid}.npz")) for pid in range(2)]

  # Both processes hold the same replicated state, bit for bit.
  assert workers[0].keys() == workers[1].keys()
  for k in workers[0]:
    np.testing.assert_array_equal(workers[0][k], workers[1][k], err_msg=k)
  multi = workers[0]

  # The checkpoint the two processes wrote together resumes here, on one process, as that state.
  multi_dir = tmp_path / "multi_run"
  assert sorted(os.listdir(multi_dir / "checkpoints" / "block0")) == ["1"]
  resumed = loop.train_block(loop.Run.create(config_for(data_dir), str(multi_dir)), 0, [])
  for k, v in final_tree(resumed).items():
    np.testing.assert_array_equal(v, multi[k], err_msg=k)

  # The same run in this process over 8 simulated devices.
  config = config_for(data_dir)
  run = loop.Run.create(config, str(tmp_path / "single"))
  loop.save_config(config, str(tmp_path / "single"))
  single = final_tree(loop.train_block(run, 0, []))
  assert multi.keys() == single.keys()

  # The same candidates were updated: LARS leaves the momentum of a tensor whose accumulated
  # gradient is zero (a candidate no micro-batch drew) at exactly zero.
  moments = [k for k in single if k.startswith("['momentum']")]
  touched = {k for k in moments if np.any(single[k] != 0)}
  assert touched == {k for k in moments if np.any(multi[k] != 0)}
  assert 0 < len(touched) < len(moments)
  touched |= {k.replace("['momentum']", p, 1) for k in touched for p in ("['online']",
                                                                         "['target']")}
  for k in single:
    if k not in touched:
      # Parameters no path used are the initial ones (identical on every host, and in both
      # runs), their momentum zero.
      np.testing.assert_array_equal(multi[k], single[k], err_msg=k)
      continue
    # Gradients are summed over the 8 devices by gloo across processes and by XLA:CPU within
    # one process, in different orders: a few ulps (at most 3 of the leaf's largest entry were
    # measured) that the accumulation, one LARS step and the EMA carry through linearly. The
    # momentum holds this step's update itself, so a run that fed other images to a device or
    # normalised other images together fails there by orders of magnitude more.
    atol = 2.0**-16 * float(np.max(np.abs(single[k])))
    np.testing.assert_allclose(multi[k], single[k], rtol=0, atol=atol, err_msg=k)


@_OPT_IN
@pytest.mark.parametrize("where", ["disk", "bucket"])
def test_main_job_on_two_processes(tmp_path, where, request):
  """The whole main job on 2 processes: ratings gather what other hosts' devices computed (a
  plain device_get of a split array fails there), process 0 searches and exports while process
  1 waits, and both leave cleanly. The workdir on a disk, or in a gs:// bucket both processes
  write to (the emulator of this process; the workers inherit its variables)."""
  from bossnas_jax import search_space as ss
  from bossnas_jax.infra import files
  from bossnas_jax.rating import rank_files

  data_dir = prepare_data(str(tmp_path / "data"))
  workdir = str(tmp_path / "run") if where == "disk" else request.getfixturevalue("bucket_dir")
  logs = _run_workers(data_dir, workdir, "--main_job", timeout=1500)
  assert "chosen:" in logs[0] and "process 1: main job done" in logs[1]
  arch = files.read_json(os.path.join(workdir, "architecture.json"))
  parsed = ss.parse_architecture(arch["architecture"])
  assert config_for(data_dir).train.epochs_per_block == 1
  rank_files = rank_files.read_rank_files(workdir)
  for b in range(ss.NUM_BLOCKS):
    scores = rank_files[(b, parsed.input_scale(b))].scores
    assert set(scores) == set(ss.candidates(b, parsed.input_scale(b)))
    assert all(np.isfinite(v) for v in scores.values())
