r"""Rating cost per candidate for the full-size block 0 at 224, on this machine
(docs/method.md#rating-design).

  python benchmarks/rating_cost.py [--calibration_images 16] [--rating_images 16] [--batch 8]

Prints, for a few block-0 candidates: BN recalibration time (target and online paths, projector,
predictor; both views) and scoring time (target projections for the centre + online predictions),
per image and extrapolated to the defaults of configs/hytra.py (2,048 calibration images, 10,000
rating images). The first candidate includes compilation; later ones reuse the layer programs.
"""

import argparse
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from bossnas_jax import search_space as ss
from bossnas_jax.data import (
  normalize,
)
from bossnas_jax.infra import compile_cache, parallel
from bossnas_jax.models import siamese
from bossnas_jax.rating import population_centre
from bossnas_jax.train import lars
from bossnas_jax.train import step as step_lib


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--calibration_images", type=int, default=16)
  ap.add_argument("--rating_images", type=int, default=16)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--candidates", type=int, default=3)
  ap.add_argument("--cache", default=os.path.expanduser("~/.cache/bossnas_jax/jax_cache"))
  args = ap.parse_args()
  compile_cache.enable(args.cache)
  dims = ss.Dims()
  models = siamese.Models(dims, 0, 4096, 256, 4096, jnp.float32)
  mesh = parallel.data_mesh()
  t = time.perf_counter()
  state = parallel.replicate(step_lib.init_state(models, jax.random.key(0, impl="rbg"),
                                                 lars.lars()), mesh)
  print(f"full-size block 0 state built in {time.perf_counter() - t:.1f} s on "
        f"{jax.device_count()} {jax.default_backend()} device(s)", flush=True)
  rng = np.random.RandomState(0)

  def pairs(n):
    out = []
    for _ in range(n // args.batch):
      views = rng.randint(0, 256, (args.batch, 2, 224, 224, 3)).astype(np.uint8)
      x = normalize.normalize(jnp.asarray(views, jnp.float32) / 255.0)
      out.append(jax.device_put(x, parallel.batch_sharded(mesh)))
    return out

  calib = pairs(args.calibration_images)
  rated = [(p, jax.device_put(np.ones(args.batch, bool), parallel.batch_sharded(mesh)))
           for p in pairs(args.rating_images)]
  rater = population_centre.Rater(models, mesh, state, ss.STEM_SCALE, calib, rated)
  cands = list(ss.candidates(0, ss.STEM_SCALE))[::17][:args.candidates]
  centre = None
  for i, path in enumerate(cands):
    t0 = time.perf_counter()
    cal = rater.calibrate(path)
    jax.block_until_ready(jax.tree.leaves(cal))
    t1 = time.perf_counter()
    zs = rater.target_projections(cal, path)
    centre = zs if centre is None else centre
    score = rater.score(cal, path, centre)
    t2 = time.perf_counter()
    rc, sc = t1 - t0, t2 - t1
    per_cal = rc / args.calibration_images
    per_rate = sc / args.rating_images
    print(f"candidate {ss.format_path(path)}{' (incl. compile)' if i == 0 else ''}: "
          f"recalibration {rc:.1f} s for {args.calibration_images} images "
          f"({per_cal * 1e3:.0f} ms/image, {per_cal * 2048 / 60:.1f} min at 2,048); "
          f"scoring {sc:.1f} s for {args.rating_images} images ({per_rate * 1e3:.0f} ms/image, "
          f"{per_rate * 10000 / 60:.1f} min at 10,000); score {score:.4f}", flush=True)
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(f"peak resident memory {rss:.1f} GB")


if __name__ == "__main__":
  main()
