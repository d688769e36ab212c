r"""Seconds per ensemble-bootstrapping micro-batch of the full-size HyTra supernet, per block.

  python benchmarks/block_step.py [--blocks 0,1,2,3] [--batch 8] [--draws 4] [--steps 2]
                                  [--dtype auto|float32|bfloat16] [--breakdown] [--profile DIR]
  python benchmarks/block_step.py --check

One micro-batch (docs/method.md#training-iteration, #d3) = device augmentation of 8 views, the
frozen prefix once per view (blocks 0..b-1 along BossNet-T0, 5433-3230-0010-0000, random weights,
inference-mode BN), then for 4 sampled paths: 8 target forwards (shuffle-BN) and 8 online
forward/backward passes into the gradient accumulator, each view pair of a path in one call with BN
statistics per view; `train.step.BlockTrainer.micro_step`, as `train/loop.py` drives it. The
optimizer update (every `accumulate_steps` micro-batches) is timed on its own.

Each block runs in a child process (so that its peak memory and its compiles are its own) on one
device (simulated CPU devices are stripped from XLA_FLAGS) and prints, for `--draws` random draws
of 4 paths never drawn before:
  * first: the draw's first micro-batch, which compiles the programs it is the first to need
    (programs are shared per unit configuration, so later draws compile less and less);
  * warm: `--steps` more micro-batches with the same paths (wall and CPU seconds); the median is
    the draw's figure, and the mean over draws is the block's seconds per micro-batch (paths
    differ in cost, so one draw is not the block's figure);
  * compile per path: (first - warm) / 4;
  * peak resident memory of the child (VmHWM), also per phase where Linux can reset it;
  * the analytic work (cost.py: FLOPs = 2 x MAdds, backward = 2 x forward, the prefix's forward
    counted) and the rate achieved; on an accelerator also images/s and the fraction of
    `--peak_tflops` per device (default 989, H100/H200 dense bf16);
  * the load average, since other processes on the machine disturb every figure.
Then one summary line per block.

`--check` compares the CPU layer forms of models/layers.py with the plain Flax/XLA ones (values and
gradients) and exits. `--breakdown` adds per-piece timings (features, targets, online) of draw 0;
`--profile DIR` traces one warm micro-batch and prints the XLA ops that took longest, by program.
The persistent compilation cache is off unless `--cache DIR` is given, so compile times are real.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time

T0 = "5433-3230-0010-0000"


def _peak_rss_gb() -> float:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 2**20
  except OSError:
    pass
  kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return kb / 2**20 if sys.platform != "darwin" else kb / 2**30


def _reset_peak() -> bool:
  """Restarts the kernel's peak-RSS counter (VmHWM) of this process, where Linux allows it."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _device_peak_gb(jax) -> float | None:
  """Peak memory in use on the first accelerator (None on CPU or where it is not reported)."""
  if jax.default_backend() == "cpu":
    return None
  try:
    return jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**30
  except (AttributeError, KeyError, TypeError):
    return None


def _load() -> str:
  return "/".join(f"{x:.1f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------------------
# One block, in this process.


def run_block(args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bossnas_jax import search_space as ss
  from bossnas_jax.data import device_augment
  from bossnas_jax.infra import compile_cache, parallel
  from bossnas_jax.models import cost, siamese, supernet
  from bossnas_jax.train import lars
  from bossnas_jax.train import step as st

  if args.cache:
    compile_cache.enable(args.cache)
  block = args.block
  accel = jax.default_backend() != "cpu"
  dtype = {"auto": jnp.bfloat16 if accel else jnp.float32, "float32": jnp.float32,
           "bfloat16": jnp.bfloat16}[args.dtype]
  dims = ss.Dims(args.width, args.resolution, args.dim_head)
  arch = ss.parse_architecture(T0)
  mesh = parallel.data_mesh()
  if not accel and jax.device_count() != 1:
    raise SystemExit(f"the CPU figures are for one device; got {jax.device_count()} (XLA_FLAGS?)")
  key = jax.random.key(args.seed, impl="rbg")
  load0 = _load()

  # The frozen prefix: freshly initialised blocks 0..b-1 along T0, BN statistics at their initial
  # values (mean 0, var 1), replicated like the loop's.
  t0 = time.perf_counter()
  prefix, prefix_vars, in_scale = [], [], ss.STEM_SCALE
  for b in range(block):
    path = arch.paths[b]
    variables = supernet.init_block(dims, b, jax.random.fold_in(key, 100 + b))
    sub = supernet.path_variables(variables, dims, b, in_scale, path)
    del variables
    prefix.append(st.PrefixBlock(b, in_scale, path))
    prefix_vars.append(parallel.replicate(sub, mesh))
    in_scale = ss.output_scale(path)
  models = siamese.Models(dims, block, 4096, 256, 4096, dtype)
  optimizer = lars.lars()
  state = parallel.replicate(st.init_state(models, jax.random.fold_in(key, block), optimizer),
                             mesh)
  jax.block_until_ready(state)
  t_init = time.perf_counter() - t0
  peaks = {"init": _peak_rss_gb()}
  phases = _reset_peak()
  augment = lambda k, v: device_augment.device_augment(k, v, dtype=dtype)  # noqa: E731
  trainer = st.BlockTrainer(models, mesh, accumulate_steps=8, augment=augment,
                            optimizer=optimizer, prefix=prefix)
  assert trainer.in_scale == in_scale
  rng = np.random.default_rng(args.seed)
  views = rng.integers(0, 256, (args.batch, 8, dims.resolution, dims.resolution, 3), np.uint8)
  views = parallel.host_batch_to_global(views, mesh)
  acc = jax.tree.map(jnp.zeros_like, state.online)
  prefix_vars = tuple(prefix_vars)
  cands = [(in_scale, p) for p in ss.candidates(block, in_scale)]
  seen: set = set()

  def programs() -> int:
    """Programs made so far (each compiles once): per unit configuration and per head."""
    weights = {"_unit_forward": 1, "_unit_backward": 1, "_unit_vjp": 2, "target_head": 1,
               "online_head": 1}
    if not hasattr(st, "_unit_forward"):  # Before programs were shared across layers.
      weights.update(unit_forward=1, unit_backward=1)
    return sum(w * getattr(st, n).cache_info().currsize for n, w in weights.items()
               if hasattr(st, n))

  def draw():
    fresh = [c for c in cands if c not in seen]
    if len(fresh) < 4:
      fresh = list(cands)
    picked = [fresh[i] for i in rng.choice(len(fresh), 4, replace=False)]
    seen.update(picked)
    return picked

  def micro(paths, k):
    nonlocal acc
    n0 = programs()
    t, c = time.perf_counter(), time.process_time()
    acc, losses = trainer.micro_step(state, acc, prefix_vars, views, jax.random.fold_in(key, k),
                                     paths)
    jax.block_until_ready((acc, losses))
    dt = (time.perf_counter() - t, time.process_time() - c)
    return dt, programs() - n0, [float(x) for x in losses]

  def flops(paths) -> float:
    """Useful FLOPs of one micro-batch (2 x MAdds; backward = 2 x forward)."""
    per_image = 0
    for s, p in paths:
      d = ss.output_scale(p)
      fwd = cost.path_cost(dims, block, s, p).madds + cost.projector_cost(dims, d).madds
      per_image += 2 * fwd + 2 * 3 * (fwd + cost.predictor_cost().madds)
    for pb in prefix:
      per_image += 8 * cost.path_cost(dims, pb.block, pb.in_scale, pb.path).madds
    return 2.0 * per_image * args.batch

  def run_draw(i: int) -> dict:
    """A fresh draw of 4 paths: the first micro-batch compiles what is new, then `--steps` more
    with the same paths (other keys) are the warm figure."""
    paths = draw()
    first, new_programs, losses = micro(paths, 1000 * i)
    warm = [micro(paths, 1000 * i + 1 + k) for k in range(args.steps)]
    return {"paths": [ss.format_path(p) for _, p in paths], "candidates": paths,
            "first_s": first[0], "first_cpu_s": first[1], "new_programs": new_programs,
            "losses": losses, "warm_s": [w[0][0] for w in warm],
            "warm_cpu_s": [w[0][1] for w in warm], "flops": flops(paths), "load": _load()}

  draws = [run_draw(i) for i in range(args.draws)]
  if phases:
    peaks["micro-batches"] = _peak_rss_gb()
    _reset_peak()
  t = time.perf_counter()
  state, acc = trainer.update(state, acc, 0.1, 0.99)
  jax.block_until_ready(state)
  update_cold = time.perf_counter() - t
  t = time.perf_counter()
  state, acc = trainer.update(state, acc, 0.1, 0.99)
  jax.block_until_ready(state)
  update_warm = time.perf_counter() - t
  if phases:
    peaks["update"] = _peak_rss_gb()

  breakdown = None
  if args.breakdown:
    breakdown, acc = _breakdown(trainer, state, acc, prefix_vars, views, key,
                                draws[0]["candidates"])
  if args.profile:
    jax.profiler.start_trace(args.profile, create_perfetto_trace=True)
    micro(draws[0]["candidates"], 99999)
    jax.profiler.stop_trace()
    _print_profile(args.profile)

  for d in draws:
    del d["candidates"]
    d["warm_median_s"] = float(np.median(d["warm_s"])) if d["warm_s"] else float("nan")
  out = {
      "block": block, "in_scale": in_scale, "prefix": [ss.format_path(p.path) for p in prefix],
      "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
      "device_count": jax.device_count(), "dtype": jnp.dtype(dtype).name, "batch": args.batch,
      "candidates": len(cands), "init_s": t_init, "draws": draws,
      "update_cold_s": update_cold, "update_warm_s": update_warm,
      "peak_rss_gb": max([*peaks.values(), _peak_rss_gb()]), "peaks": peaks,
      "device_peak_gb": _device_peak_gb(jax), "load_start": load0, "load_end": _load(),
      "breakdown": breakdown}
  return out


def _breakdown(trainer, state, acc, prefix_vars, views, key, paths) -> dict:
  """The pieces of `micro_step`, each waited for, with the same (already compiled) programs.
  Returns the timings and the accumulator (the online passes donate the one they are given)."""
  import jax

  from bossnas_jax.train import step as st

  def timed(f):
    t = time.perf_counter()
    r = jax.block_until_ready(f())
    return r, time.perf_counter() - t

  feats, t_feat = timed(lambda: trainer.features(prefix_vars, views, jax.random.fold_in(key, 0)))
  take = st._pair_program(trainer.mesh)
  pairs = [take(feats, j) for j in range(len(paths))]
  zs, t_target = [], []
  for j, ((s, p), pair) in enumerate(zip(paths, pairs)):
    z, dt = timed(functools.partial(trainer.target, state, s, p, pair,
                                    jax.random.fold_in(key, 1 + j)))
    zs.append(z)
    t_target.append(dt)
  targets = sum(zs[1:], zs[0]) / len(zs)
  t_online = []
  for (s, p), pair in zip(paths, pairs):
    (acc, _), dt = timed(functools.partial(trainer.online, state, acc, s, p, pair, targets))
    t_online.append(dt)
  return {"features_s": t_feat, "target_s": t_target, "online_s": t_online}, acc


def _print_profile(directory: str, top: int = 30) -> None:
  """The most expensive XLA ops of the traced micro-batch, with their JAX source op names (from
  the optimised HLO that the child dumps next to the trace)."""
  import collections
  import glob
  import gzip
  import re

  trace = sorted(glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True))[-1]
  with gzip.open(trace) as f:
    events = json.load(f)["traceEvents"]
  total = collections.Counter()
  for e in events:
    a = e.get("args", {})
    if e.get("ph") == "X" and "hlo_op" in a:
      total[(a["hlo_module"], a["hlo_op"])] += e["dur"] / 1e3
  texts = {}
  for path in glob.glob(os.path.join(directory, "hlo", "*after_optimizations.txt")):
    m = re.match(r"module_\d+\.(.+?)\.", os.path.basename(path))
    if m:
      with open(path) as f:
        texts.setdefault(m.group(1), f.read())
  all_ms = sum(total.values())
  by_module = collections.Counter()
  for (module, _), ms in total.items():
    by_module[re.sub(r"^jit_|(\.\d+)+$", "", module)] += ms
  kinds = collections.Counter()
  for module, ms in by_module.items():
    kinds[re.sub(r"_(op\d|scale).*$", "", module)] += ms
  print(f"profile: {all_ms / 1e3:.2f} s of XLA ops in one micro-batch (sum of op durations); "
        "by kind of program: "
        + ", ".join(f"{k} {ms / 1e3:.2f} s" for k, ms in kinds.most_common()))
  print("by program (one per unit configuration or head):")
  for module, ms in by_module.most_common(top):
    print(f"  {ms:9.1f} ms {100 * ms / all_ms:5.1f}%  {module}")
  print(f"top {top} XLA ops:")
  for (module, op), ms in total.most_common(top):
    desc = ""
    line = re.search(rf"^\s*(ROOT )?%?{re.escape(op)} = (.*)$", texts.get(module, ""), re.M)
    if line:
      body = line.group(2)
      shape = body.split(" ", 1)[0][:60]
      name = re.search(r'op_name="([^"]+)"', body)
      kind = re.search(r"kind=(k\w+)", body)
      desc = f"{shape} {kind.group(1) if kind else ''} {name.group(1)[-90:] if name else ''}"
    print(f"  {ms:9.1f} ms {100 * ms / all_ms:5.1f}%  {module[:28]:<28} {op[:24]:<24} {desc}")


# ------------------------------------------------------------------------------------------------
# Reporting.


def _mean(xs) -> float:
  return sum(xs) / len(xs)


def report(r: dict, peak_tflops: float) -> str:
  lines = [f"block {r['block']} (input scale {r['in_scale']}, {r['candidates']} candidates, prefix "
           f"{'-'.join(r['prefix']) or 'none'}; {r['backend']} {r['device']} x"
           f"{r['device_count']}, {r['dtype']}, batch {r['batch']} per view)"]
  for i, d in enumerate(r["draws"]):
    w = d["warm_median_s"]
    lines.append(
        f"  draw {i}: paths {' '.join(d['paths'])}: first {d['first_s']:.2f} s "
        f"({d['new_programs']} programs compiled, ~{(d['first_s'] - w) / 4:.1f} s compile per "
        f"path), warm {' '.join(f'{x:.2f}' for x in d['warm_s'])} s (CPU "
        f"{' '.join(f'{x:.1f}' for x in d['warm_cpu_s'])} s), {d['flops'] / 1e9:.0f} GFLOP, "
        f"load {d['load']}")
  warm = [d["warm_median_s"] for d in r["draws"]]
  mean_s, fl = _mean(warm), _mean([d["flops"] for d in r["draws"]])
  rate = fl / mean_s / 1e9
  lines.append(f"  => {mean_s:.2f} s per micro-batch (mean over {len(warm)} draws; "
               f"{min(warm):.2f}-{max(warm):.2f}); {rate:.1f} GFLOP/s of useful work "
               f"(2 x MAdds, backward = 2 x forward)")
  lines.append(f"  compile: {(r['draws'][0]['first_s'] - warm[0]) / 4:.1f} s per path when all its "
               "programs are new (draw 0); later draws "
               + ", ".join(f"{(d['first_s'] - d['warm_median_s']) / 4:.1f}"
                           for d in r["draws"][1:]) + " s per path")
  lines.append(f"  optimizer update {r['update_warm_s']:.2f} s (first {r['update_cold_s']:.2f} s); "
               f"init {r['init_s']:.1f} s")
  if r["backend"] != "cpu":
    ips = r["batch"] / mean_s  # `batch` images per view in all, split over the devices.
    lines.append(f"  {ips:.1f} images/s ({8 * ips:.1f} views/s); {rate / 1e3:.2f} TFLOP/s = "
                 f"{100 * rate / 1e3 / (peak_tflops * r['device_count']):.1f}% of "
                 f"{peak_tflops:g} TFLOP/s peak per device")
  b = r.get("breakdown")
  if b:
    lines.append(f"  breakdown (draw 0): features {b['features_s']:.2f} s; targets "
                 f"{' '.join(f'{x:.2f}' for x in b['target_s'])} s; online "
                 f"{' '.join(f'{x:.2f}' for x in b['online_s'])} s")
  if r.get("device_peak_gb") is not None:
    lines.append(f"  peak accelerator memory {r['device_peak_gb']:.2f} GB")
  phases = ", ".join(f"{k} {v:.2f}" for k, v in r.get("peaks", {}).items())
  lines.append(f"  peak RSS {r['peak_rss_gb']:.2f} GB ({phases}); load average "
               f"{r['load_start']} at start, {r['load_end']} at end; first losses "
               f"{[round(x, 4) for x in r['draws'][0]['losses']]}")
  return "\n".join(lines)


def summary(r: dict) -> str:
  warm = [d["warm_median_s"] for d in r["draws"]]
  d0 = r["draws"][0]
  return (f"block {r['block']}: {_mean(warm):.2f} s per micro-batch ({min(warm):.1f}-"
          f"{max(warm):.1f} over {len(warm)} draws; batch {r['batch']}x8 views, {r['dtype']}, "
          f"{r['backend']}), compile {(d0['first_s'] - d0['warm_median_s']) / 4:.1f} s per new "
          f"path, peak RSS {r['peak_rss_gb']:.2f} GB, load {r['load_end']}")


# ------------------------------------------------------------------------------------------------
# --check: the fast layer forms against plain nn.Conv.


def run_check(args) -> int:
  """Every convolution form of `layers.cpu_conv` against `lax.conv_general_dilated` (what plain
  nn.Conv runs): outputs and the gradients with respect to input and parameters, float32, with
  the batch vmapped over two views as the training step does."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bossnas_jax.models import layers

  print(f"backend {jax.default_backend()} (on other backends than cpu both sides are lax)")
  rng = np.random.default_rng(0)
  worst, ok = 0.0, True
  cases = []
  for c, s, h in ((64, 1, 56), (128, 2, 56), (256, 1, 14), (512, 2, 14), (16, 2, 7), (8, 1, 4)):
    cases.append((f"PEG depthwise 3x3/s{s} pad 1, {c} ch, {h}x{h}", layers.peg(c, s, "m", None),
                  None, (h, c)))
  for c, s, h in ((64, 8, 56), (64, 4, 56), (64, 2, 56), (64, 1, 56), (1024, 2, 14), (512, 4, 28),
                  (256, 8, 56), (16, 2, 7)):
    cases.append((f"patchify depthwise k=s={s}, {c} ch, {h}x{h}",
                  layers.patchify(c, s, "m", None), None, (h, c)))
  for ci, co, h in ((256, 512, 56), (512, 1024, 28), (1024, 2048, 14), (32, 64, 7), (8, 16, 5)):
    cases.append((f"dense 3x3/s2 pad 1, {ci}->{co}, {h}x{h}",
                  layers.conv(co, 3, 2, 1, "m", None), None, (h, ci)))
  for ci, co, h, k, s, p in ((64, 64, 56, 3, 1, 1), (128, 128, 28, 3, 1, 1),
                            (512, 512, 7, 3, 1, 1), (3, 64, 224, 7, 2, 3), (4, 8, 9, 7, 2, 3)):
    cases.append((f"dense {k}x{k}/s{s} pad {p}, {ci}->{co}, {h}x{h}",
                  layers.conv(co, k, s, p, "m", None), None, (h, ci)))
  # 1x1 convolutions (nn.Dense with `layers.cpu_dense_dot`) against plain nn.Dense.
  for ci, co, h in ((64, 256, 56), (1024, 256, 14), (512, 1536, 7), (8, 4, 3)):
    fast = layers.conv1x1(co, "m", None)
    slow = nn.Dense(co, use_bias=False, kernel_init=layers.torch_default_init)
    cases.append((f"1x1 (Dense) {ci}->{co}, {h}x{h}", fast, slow, (h, ci)))

  for name, fast, slow, (h, c) in cases:
    if slow is None:
      slow = fast.clone(conv_general_dilated=None)
    x = jnp.asarray(rng.standard_normal((2, 2, h, h, c)), jnp.float32)
    variables = slow.init(jax.random.key(0), x[:, 0])

    def run(m, v, x):
      return jax.vmap(lambda xv: m.apply(v, xv), in_axes=1, out_axes=1)(x)

    ys = jax.jit(functools.partial(run, slow))(variables, x)
    yf = jax.jit(functools.partial(run, fast))(variables, x)
    dy = jnp.asarray(rng.standard_normal(ys.shape), jnp.float32)

    def grads(m, variables=variables, x=x, dy=dy):
      def loss(v, x):
        return jnp.sum(run(m, v, x) * dy)
      return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x)

    def rel(a, b):
      return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))

    errs = [rel(yf, ys)] + [rel(a, b) for a, b in zip(jax.tree.leaves(grads(fast)),
                                                      jax.tree.leaves(grads(slow)))]
    e = max(errs)
    good = yf.shape == ys.shape and e < 2e-5
    worst, ok = max(worst, e), ok and good
    print(f"{'ok ' if good else 'BAD'} {name:<48} out {tuple(ys.shape)}  max |diff| / max |ref|: "
          f"value {errs[0]:.1e}, gradients {max(errs[1:]):.1e}", flush=True)
  # Max pooling (the stem's 3x3/s2/p1) against nn.max_pool; inputs rounded to a coarse grid and
  # clipped at 0 (as after the stem's ReLU) give windows with ties, whose gradient must go to the
  # same position as XLA's.
  def pooled(fn, x):
    return jax.vmap(fn, in_axes=1, out_axes=1)(x)

  fast = functools.partial(layers.max_pool, window=3, stride=2, padding=1)
  slow = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2),
                           padding=((1, 1), (1, 1)))
  for h, c, grid in ((112, 64, 0.0), (112, 64, 0.5), (9, 4, 0.0)):
    x = jnp.asarray(rng.standard_normal((2, 2, h, h, c)), jnp.float32)
    if grid:
      x = jnp.maximum(jnp.round(x / grid) * grid, 0.0)
    ys, yf = pooled(slow, x), jax.jit(functools.partial(pooled, fast))(x)
    dy = jnp.asarray(rng.standard_normal(ys.shape), jnp.float32)

    def grad(fn, x=x, dy=dy):
      return jax.jit(jax.grad(lambda v: jnp.sum(pooled(fn, v) * dy)))(x)

    e_val = float(jnp.max(jnp.abs(yf - ys)))
    e_grad = float(jnp.max(jnp.abs(grad(fast) - grad(slow))))
    good = e_val == 0 and e_grad == 0
    worst, ok = max(worst, e_grad), ok and good
    name = f"max pool 3x3/s2/p1, {c} ch, {h}x{h}" + (" (with ties)" if grid else "")
    print(f"{'ok ' if good else 'BAD'} {name:<48} out {tuple(ys.shape)}  value diff {e_val:.1e}, "
          f"gradient diff {e_grad:.1e}", flush=True)
  print(f"check {'passed' if ok else 'FAILED'}: worst relative difference {worst:.1e} "
        "(float32 rounding; tolerance 2e-5)")
  return 0 if ok else 1


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--blocks", default="0,1,2,3")
  p.add_argument("--batch", type=int, default=8, help="images per view (8 views each)")
  p.add_argument("--draws", type=int, default=4,
                 help="random draws of 4 never-seen paths, each timed cold then warm")
  p.add_argument("--steps", type=int, default=2,
                 help="warm micro-batches per draw (same paths, other keys); the median counts")
  p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
  p.add_argument("--peak_tflops", type=float, default=989.0)
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--dim_head", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--cache", default="", help="persistent compilation cache dir (default: off)")
  p.add_argument("--breakdown", action="store_true")
  p.add_argument("--profile", default="", help="trace one warm micro-batch into this dir and "
                 "print the top XLA ops")
  p.add_argument("--check", action="store_true")
  p.add_argument("--json", default="", help="also write the results to this file")
  p.add_argument("--block", type=int, default=-1, help=argparse.SUPPRESS)  # child mode
  args = p.parse_args(argv)

  if args.check:
    return run_check(args)
  if args.block >= 0:
    print("RESULT " + json.dumps(run_block(args)), flush=True)
    return 0

  results = []
  base = [a for a in (argv if argv is not None else sys.argv[1:])]
  for b in (int(x) for x in args.blocks.split(",")):
    cmd = [sys.executable, os.path.abspath(__file__), *base, "--block", str(b)]
    env = dict(os.environ)
    # One device: simulated CPU devices (tests/conftest.py) would split the batch and run slower.
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    if args.profile:
      args_profile = os.path.abspath(os.path.join(args.profile, f"block{b}"))
      cmd += ["--profile", args_profile]
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_dump_to={args_profile}/hlo"
                          " --xla_dump_hlo_as_text").strip()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if args.profile:
      text = proc.stdout
      print(text[text.find("profile:"):text.find("RESULT ")].rstrip(), flush=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
      print(f"block {b}: failed (exit {proc.returncode})\n{proc.stdout[-3000:]}"
            f"{proc.stderr[-3000:]}", flush=True)
      continue
    r = json.loads(lines[-1][len("RESULT "):])
    results.append(r)
    print(report(r, args.peak_tflops), flush=True)
  print("\nsummary:")
  for r in results:
    print("  " + summary(r))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  return 0 if results else 1


if __name__ == "__main__":
  sys.exit(main())
