r"""Images/s of the retraining step exactly as launch/retrain.py runs it, on this machine.

  python benchmarks/retrain_speed.py [--arch bossnet_t0] [--resolution 224] [--batch 8]
                                     [--steps 3] [--dtype auto]

The step is `retrain.step.Programs.train_step` with the full recipe of configs/retrain.py: random
erasing + mixup/cutmix + label smoothing on device, train-mode BN, drop-path 0.1, soft-target
cross-entropy, AdamW with its masks and schedule, model EMA; jit(shard_map) over every local
device (the global batch split over them). Inputs are random uint8 images already on the devices,
so the host input pipeline is not measured (benchmarks/input_pipeline.py does that).
`--dtype auto` computes in float32 on CPU and bfloat16 on GPU/TPU; parameters stay float32.
Compile time is reported apart; the 1-minute load average is printed, since other processes on a
shared CPU change the figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bossnas_jax.infra import parallel
from bossnas_jax.models import bossnet, cost
from bossnas_jax.retrain import optim, state, step
from configs import retrain as retrain_config


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--arch", default="bossnet_t0")
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--batch", type=int, default=8, help="global batch (over all local devices)")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--classes", type=int, default=1000)
  p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
  args = p.parse_args(argv)

  config = retrain_config.get_config()
  config.model.arch, config.model.resolution = args.arch, args.resolution
  config.model.compute_dtype = args.dtype
  config.train.batch_size = args.batch
  parallel.check_batch(args.batch, "--batch")
  net = state.network_config(config, args.classes)
  dev = jax.devices()[0]
  dtype = (jnp.bfloat16 if dev.platform != "cpu" else jnp.float32) if args.dtype == "auto" \
      else jnp.dtype(args.dtype).type
  model = bossnet.BossNet(net, dtype)
  madds = cost.bossnet_cost(net, args.resolution).madds
  print(f"# {args.arch} @{args.resolution}, global batch {args.batch} over {jax.device_count()} "
        f"{dev.platform} device(s) ({dev.device_kind}), {jnp.dtype(dtype).name} compute, jax "
        f"{jax.__version__}; {madds / 1e9:.3f} GMAdds/image")
  mesh = parallel.data_mesh()
  tx, _ = optim.from_config(config.train, steps_per_epoch=1000)
  programs = step.Programs(model, tx, mesh, config.augment, args.classes,
                           float(config.train.ema_decay))
  s = parallel.replicate(state.init_state(model, tx, jax.random.key(0, impl="rbg"),
                                          args.resolution), mesh)
  rng = np.random.default_rng(0)
  images = parallel.host_batch_to_global(
      rng.integers(0, 256, (args.batch, args.resolution, args.resolution, 3), np.uint8), mesh)
  labels = parallel.host_batch_to_global(
      rng.integers(0, args.classes, (args.batch,)).astype(np.int32), mesh)
  key = jax.random.key(1, impl="rbg")

  t0 = time.perf_counter()
  s, m = programs.train_step(s, images, labels, key)
  jax.block_until_ready(m)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(args.steps):
    s, m = programs.train_step(s, images, labels, key)
  jax.block_until_ready(m)
  per = (time.perf_counter() - t0) / args.steps
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  print(f"retrain step: {args.batch / per:.2f} images/s ({1e3 * per:.0f} ms/step, mean of "
        f"{args.steps}), {3 * 2 * madds * args.batch / per / 1e12:.3f} TFLOP/s (3x forward); "
        f"compile + first step {first:.1f} s; loss {float(m['loss']):.3f}; load average "
        f"{load:.2f} on {os.cpu_count()} CPUs")
  return 0


if __name__ == "__main__":
  sys.exit(main())
