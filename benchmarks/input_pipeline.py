r"""Input pipeline throughput: source images/s for 8 views at 224 (host part, host + device part).

Measured on JPEG-encoded photos of ImageNet's typical size (500x375, quality 90): the 20 real
ImageNet samples of the foolbox wheel (`pip install --no-deps foolbox`), resized; without foolbox,
smooth random images (a weaker stand-in: they decode faster than photos).

  python benchmarks/input_pipeline.py [--seconds 10] [--workers N] [--batch 16]

Prints, per line, source images per second (and per core where it applies):
  host, 1 process       multi_view (decode + 8 x crop/bicubic resize/flip) in one process, per
                        wall-clock second and per CPU-second it used (the per-core rate, which
                        other load on the machine does not distort);
  host, grain loader    train_iterator with N worker processes over the same JPEGs in memory;
  device part           jit(device_augment) on this machine's default JAX device;
  host + device         the grain loader feeding jit(device_augment), both on this machine.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import io
import os
import time

import numpy as np
from PIL import Image

WIDTH, HEIGHT, RESOLUTION, VIEWS = 500, 375, 224, 8


def sample_jpegs() -> tuple[list[bytes], str]:
  """JPEG files of 500x375 photos and a word on where they come from."""
  spec = importlib.util.find_spec("foolbox")
  paths = []
  if spec is not None and spec.origin is not None:
    paths = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "data", "imagenet_*.jpg")))
  images, origin = [], f"{len(paths)} foolbox ImageNet photos"
  for path in paths:
    images.append(Image.open(path).convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC))
  if not images:
    origin = "20 smooth random images (foolbox is not installed)"
    rng = np.random.default_rng(0)
    for _ in range(20):
      small = Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8))
      images.append(small.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC))
  encoded = []
  for image in images:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    encoded.append(buffer.getvalue())
  return encoded, origin


def host_alone(jpegs: list[bytes], seconds: float) -> tuple[float, float]:
  """(source images per wall-clock second, per CPU-second of this process) of the host part."""
  from bossnas_jax.data import host_augment

  rng = np.random.default_rng(0)
  for jpeg in jpegs[:4]:  # Warm-up.
    host_augment.multi_view(jpeg, rng, resolution=RESOLUTION, num_views=VIEWS)
  count, start, cpu_start = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - start < seconds:
    host_augment.multi_view(jpegs[count % len(jpegs)], rng, resolution=RESOLUTION, num_views=VIEWS)
    count += 1
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  return count / wall, count / cpu


def loader(jpegs: list[bytes], workers: int, batch: int, copies: int):
  import ml_collections

  from bossnas_jax.data import pipeline, sources

  records = [{"image": jpegs[i % len(jpegs)], "label": i % 1000} for i in range(copies)]
  source = sources.ImageSource(records=records, name="jpegs", split="memory", data_dir="",
                               num_classes=1000)
  data = ml_collections.ConfigDict(dict(
      num_pairs=VIEWS // 2, crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3),
      worker_count=workers, train_split="memory"))
  return pipeline.train_iterator(data, resolution=RESOLUTION, seed=0, block=0,
                                 global_batch_size=batch, num_epochs=10_000, source=source,
                                 process_index=0, process_count=1, device_count=1)


def timed(iterator, batch: int, seconds: float, consume=None) -> float:
  for _ in range(2):  # Warm-up: worker start, first compile.
    out = next(iterator)
    if consume is not None:
      consume(out)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    out = next(iterator)
    if consume is not None:
      consume(out)
    count += batch
  return count / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per figure")
  parser.add_argument("--workers", type=int, default=os.cpu_count(), help="grain worker processes")
  parser.add_argument("--batch", type=int, default=16, help="source images per batch")
  args = parser.parse_args()
  cores = os.cpu_count() or 1

  jpegs, origin = sample_jpegs()
  print(f"{origin}, {WIDTH}x{HEIGHT} JPEG q90 (mean {np.mean([len(j) for j in jpegs]) / 1e3:.0f} "
        f"kB), {VIEWS} views at {RESOLUTION}, {cores} CPU cores, load average "
        f"{os.getloadavg()[0]:.1f} before the run")
  rate, per_cpu_second = host_alone(jpegs, args.seconds)
  print(f"host, 1 process          : {rate:7.1f} source images/s  ({per_cpu_second:.1f} per "
        f"CPU-second: the per-core figure, whatever else runs on the machine)")

  iterator = loader(jpegs, args.workers, args.batch, copies=4096)
  rate = timed(iterator, args.batch, args.seconds)
  iterator.close()
  print(f"host, grain {args.workers} workers   : {rate:7.1f} source images/s  "
        f"({rate / min(cores, max(args.workers, 1)):.1f} per core)")

  import jax

  from bossnas_jax.data import device_augment

  augment = jax.jit(device_augment.device_augment)
  views = jax.numpy.zeros((args.batch, VIEWS, RESOLUTION, RESOLUTION, 3), jax.numpy.uint8)
  key = jax.random.key(0)
  augment(key, views).block_until_ready()
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < args.seconds:
    augment(jax.random.fold_in(key, count), views).block_until_ready()
    count += args.batch
  device = jax.devices()[0].device_kind
  rate = count / (time.perf_counter() - start)
  print(f"device part ({device}): {rate:7.1f} source images/s")

  iterator = loader(jpegs, args.workers, args.batch, copies=4096)
  step = [0]

  def consume(batch):
    step[0] += 1
    augment(jax.random.fold_in(key, step[0]), batch["views"]).block_until_ready()

  rate = timed(iterator, args.batch, args.seconds, consume)
  iterator.close()
  print(f"host + device, same machine: {rate:7.1f} source images/s")


if __name__ == "__main__":
  main()
