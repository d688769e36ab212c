r"""BossNet inference throughput and train-step time on this machine's default JAX device.

  python benchmarks/bossnet_speed.py [--model bossnet_t0] [--resolution 224] [--batch 8]
                                     [--steps 5] [--dtype auto] [--max-batch]

Prints one line per measurement: eval-mode forward (images/s, ms per batch) and one training step
(forward + backward + AdamW update, train-mode BN, drop-path 0.1, label-smoothed cross-entropy;
ms per step, images/s), with the achieved rate in TFLOP/s from the analytic cost model
(cost.bossnet_cost, FLOPs = 2·MAdds; a training step counted as 3x the forward).

`--dtype auto` computes in float32 on CPU and bfloat16 on GPU/TPU (parameters stay float32).
`--max-batch` (the default on an accelerator) also finds the largest batch that fits, by doubling
from --batch until the device runs out of memory, and reports that batch too.
Compile time is reported separately and excluded from the rates.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bossnas_jax.models import bossnet, cost


def _batch(n: int, res: int, classes: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((n, res, res, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, classes, (n,)), jnp.int32)
  return x, y


def make_steps(model: bossnet.BossNet, tx):
  def infer(variables, x):
    return model.apply(variables, x, train=False)

  def loss_fn(params, stats, x, y, key):
    logits, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                              mutable=["batch_stats"], rngs={"dropout": key})
    labels = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), 0.1)
    return optax.softmax_cross_entropy(logits, labels).mean(), upd["batch_stats"]

  def train(params, stats, opt_state, x, y, key):
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  return jax.jit(infer), jax.jit(train, donate_argnums=(0, 1, 2))


def _time(fn, steps: int) -> tuple[float, float]:
  """(compile + first call seconds, mean seconds per later call)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return first, (time.perf_counter() - t0) / steps


def measure(model, variables, tx, batch: int, res: int, steps: int) -> dict[str, float]:
  infer, train = make_steps(model, tx)
  x, y = _batch(batch, res, model.config.num_classes)
  first_i, t_infer = _time(lambda: infer(variables, x), steps)
  state = {"p": jax.tree.map(jnp.array, variables["params"]),
           "s": jax.tree.map(jnp.array, variables["batch_stats"])}
  state["o"] = tx.init(state["p"])
  key = jax.random.key(0)

  def one():
    state["p"], state["s"], state["o"], loss = train(state["p"], state["s"], state["o"], x, y,
                                                     key)
    return loss

  first_t, t_train = _time(one, steps)
  return {"batch": batch, "infer_s": t_infer, "train_s": t_train, "compile_infer_s": first_i,
          "compile_train_s": first_t}


def _is_oom(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="bossnet_t0")
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
  p.add_argument("--max-batch", action=argparse.BooleanOptionalAction, default=None,
                 help="also find the largest batch that fits (default: on accelerators)")
  p.add_argument("--max-batch-limit", type=int, default=4096)
  args = p.parse_args(argv)

  dev = jax.devices()[0]
  accel = dev.platform != "cpu"
  dtype = {"auto": jnp.bfloat16 if accel else jnp.float32, "float32": jnp.float32,
           "bfloat16": jnp.bfloat16}[args.dtype]
  config = bossnet.resolve_config(args.model, drop_path_rate=0.1)
  model = bossnet.BossNet(config, dtype)
  madds = cost.bossnet_cost(config, args.resolution).madds
  print(f"# {config.name or args.model} @{args.resolution}, {jnp.dtype(dtype).name} compute, "
        f"device {dev.device_kind} ({dev.platform}), jax {jax.__version__}; "
        f"{madds / 1e9:.3f} GMAdds/image (true convention)")
  t0 = time.perf_counter()
  variables = jax.block_until_ready(
      bossnet.init_variables(model, jax.random.key(0, impl="rbg"), args.resolution))
  print(f"# init (compile + run) {time.perf_counter() - t0:.1f} s, "
        f"{bossnet.count_params(variables['params']):,} params")
  tx = optax.adamw(1e-3, weight_decay=0.05)

  def report(r, label):
    b = r["batch"]
    fi = 2 * madds * b / r["infer_s"] / 1e12
    ft = 3 * 2 * madds * b / r["train_s"] / 1e12
    print(f"{label:<10} batch {b:>5}  inference {b / r['infer_s']:>9.1f} images/s "
          f"({1e3 * r['infer_s']:8.1f} ms/batch, {fi:6.2f} TFLOP/s)   train step "
          f"{1e3 * r['train_s']:8.1f} ms ({b / r['train_s']:8.1f} images/s, {ft:6.2f} TFLOP/s)   "
          f"compile {r['compile_infer_s']:.1f} s + {r['compile_train_s']:.1f} s")

  report(measure(model, variables, tx, args.batch, args.resolution, args.steps), "fixed")
  if args.max_batch if args.max_batch is not None else accel:
    best, b = None, args.batch * 2
    while b <= args.max_batch_limit:
      try:
        r = measure(model, variables, tx, b, args.resolution, max(2, args.steps // 2))
      except Exception as e:  # noqa: BLE001  (XlaRuntimeError on OOM)
        if not _is_oom(e):
          raise
        print(f"# batch {b}: out of memory")
        break
      best = r
      b *= 2
    if best is not None:
      report(best, "largest")
  return 0


if __name__ == "__main__":
  sys.exit(main())
