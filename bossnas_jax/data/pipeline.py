"""Grain input pipelines: the resumable multi-view training iterator, rating and calibration sets.

Randomness (docs/method.md#d8): the order of epoch e of block b is a permutation seeded with
(seed, b, e); the crop and flip of the image at position p of that order are seeded with
(seed, b, e, p). Data order and views therefore differ per block and per epoch, are reproducible
from the seed, and do not depend on the number of hosts or workers. Each global batch is the next
`global_batch_size` positions of the epoch's order; host h takes its contiguous slice of it
(`to_global` puts the slices back together as one array sharded over the ('data',) mesh). Every
batch is full: the last partial batch of an epoch is dropped.

Batches are per-host numpy dicts {'views': uint8 (local_batch, V, R, R, 3), 'label': int32
(local_batch,)}; the device part of the augmentation (`device_augment.device_augment`) runs in the
jitted step. The training iterator is a `grain.DatasetIterator`: `get_state()` is a JSON-able dict
to store in the checkpoint, and `set_state(state)` on a fresh iterator built with the same arguments
continues with the very next batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

import grain
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bossnas_jax.data import host_augment, sources

# Stream ids, folded into every seed so that the three uses never share random numbers.
TRAIN, RATING, CALIBRATION = 0, 1, 2


def epoch_seed(seed: int, block: int, epoch: int) -> int:
  """The shuffle seed of epoch `epoch` of block `block` (docs/method.md#d8)."""
  return int(np.random.SeedSequence([seed, TRAIN, block, epoch]).generate_state(1)[0])


def epoch_order(num_images: int, seed: int, block: int, epoch: int) -> np.ndarray:
  """The permutation of 0..num_images-1 that epoch `epoch` of block `block` reads."""
  return np.random.default_rng(epoch_seed(seed, block, epoch)).permutation(num_images)


def steps_per_epoch(num_images: int, global_batch_size: int) -> int:
  """Full global batches per epoch (the remainder is dropped)."""
  steps = num_images // global_batch_size
  if steps == 0:
    raise ValueError(f"The global batch of {global_batch_size} images is larger than the "
                     f"{num_images} images of the training split.")
  return steps


def local_batch_size(global_batch_size: int, *, device_count: int, process_count: int) -> int:
  """Images per host in each global batch; a clear error unless the batch divides the devices."""
  if global_batch_size <= 0 or global_batch_size % device_count:
    raise ValueError(
        f"The global batch size {global_batch_size} must be a positive multiple of the number of "
        f"devices ({device_count}): every device takes the same number of images. Change "
        f"config.train.batch_size (or rating.batch_size) or the number of devices.")
  if global_batch_size % process_count:
    raise ValueError(f"The global batch size {global_batch_size} does not divide over "
                     f"{process_count} hosts.")
  return global_batch_size // process_count


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """The host part of the augmentation: views per image, output side, crop ranges."""

  resolution: int
  num_views: int
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)

  @classmethod
  def from_config(cls, data: ml_collections.ConfigDict, resolution: int,
                  num_views: int) -> ViewSpec:
    return cls(resolution=int(resolution), num_views=int(num_views),
               crop_scale=tuple(float(x) for x in data.crop_scale),
               crop_ratio=tuple(float(x) for x in data.crop_ratio))

  def views(self, image, seed_words: Sequence[int]) -> np.ndarray:
    rng = np.random.default_rng([int(w) for w in seed_words])
    return host_augment.multi_view(image, rng, resolution=self.resolution,
                                   num_views=self.num_views, scale=self.crop_scale,
                                   ratio=self.crop_ratio)


def open_split(data: ml_collections.ConfigDict, split: str) -> sources.ImageSource:
  """Opens `split` of the configured data set (config.data.name / data_dir)."""
  return sources.open_source(data.name, split, data.data_dir)


class _TrainBatch:
  """Batch k of a host's training stream -> {'views', 'label'} (a grain map over batch indices)."""

  def __init__(self, source, spec: ViewSpec, *, seed: int, block: int, steps: int,
               local_batch: int, global_batch: int, process_index: int, first_epoch: int):
    self.source, self.spec, self.seed, self.block = source, spec, seed, block
    self.steps, self.local_batch, self.global_batch = steps, local_batch, global_batch
    self.offset = process_index * local_batch
    self.first_epoch = first_epoch
    self._order = (None, None)  # (epoch, permutation) of the last epoch read.

  def order(self, epoch: int) -> np.ndarray:
    cached_epoch, order = self._order
    if cached_epoch != epoch:
      order = epoch_order(len(self.source), self.seed, self.block, epoch)
      self._order = (epoch, order)
    return order

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    epoch, step = divmod(int(index), self.steps)
    epoch += self.first_epoch
    order = self.order(epoch)
    views = np.empty((self.local_batch, self.spec.num_views, self.spec.resolution,
                      self.spec.resolution, 3), np.uint8)
    labels = np.empty((self.local_batch,), np.int32)
    first = step * self.global_batch + self.offset
    items = self.source.read(order[first:first + self.local_batch])
    for j, (image, label) in enumerate(items):
      labels[j] = label
      views[j] = self.spec.views(image, (self.seed, TRAIN, self.block, epoch, first + j))
    return {"views": views, "label": labels}


def _read_options(worker_count: int, threads: int | None) -> grain.ReadOptions:
  # Elements are whole batches: a few in flight is enough, and bounds the memory.
  threads = threads if threads is not None else (2 if worker_count == 0 else 1)
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, threads))


def _multiprocess(ds: grain.IterDataset, worker_count: int) -> grain.IterDataset:
  if worker_count <= 0:
    return ds
  from absl import flags  # Grain's worker processes read absl flags (google/grain#1355).

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                     per_worker_buffer_size=1))


def train_iterator(data: ml_collections.ConfigDict, *, resolution: int, seed: int, block: int,
                   global_batch_size: int, num_epochs: int, first_epoch: int = 0,
                   source: sources.ImageSource | None = None,
                   process_index: int | None = None, process_count: int | None = None,
                   device_count: int | None = None, worker_count: int | None = None,
                   threads: int | None = None) -> grain.DatasetIterator:
  """The training batches of block `block`, epochs first_epoch .. first_epoch + num_epochs - 1.

  Yields this host's {'views': uint8 (local_batch, 2 * num_pairs, R, R, 3), 'label': int32}, views
  0..num_pairs-1 for pipeline 1 and the rest for pipeline 2 (the host part is the same for both).
  `source` defaults to config.data.train_split; processes and devices default to JAX's.
  """
  source = source if source is not None else open_split(data, data.train_split)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  device_count = jax.device_count() if device_count is None else device_count
  worker_count = int(data.worker_count) if worker_count is None else worker_count
  local_batch = local_batch_size(global_batch_size, device_count=device_count,
                                 process_count=process_count)
  steps = steps_per_epoch(len(source), global_batch_size)
  spec = ViewSpec.from_config(data, resolution, 2 * int(data.num_pairs))
  make_batch = _TrainBatch(source, spec, seed=seed, block=block, steps=steps,
                           local_batch=local_batch, global_batch=global_batch_size,
                           process_index=process_index, first_epoch=first_epoch)
  ds = grain.MapDataset.range(num_epochs * steps).map(make_batch)
  ds = ds.to_iter_dataset(_read_options(worker_count, threads))
  return iter(_multiprocess(ds, worker_count))


class _FixedBatch:
  """Batch k of a fixed image list with 2 views each; positions past the list are masked out."""

  def __init__(self, source, indices: np.ndarray, spec: ViewSpec, seed_prefix: tuple[int, ...],
               local_batch: int, global_batch: int, process_index: int):
    self.source, self.indices, self.spec, self.seed_prefix = source, indices, spec, seed_prefix
    self.local_batch, self.global_batch = local_batch, global_batch
    self.offset = process_index * local_batch

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    shape = (self.local_batch, self.spec.num_views, self.spec.resolution, self.spec.resolution, 3)
    views = np.zeros(shape, np.uint8)
    labels = np.zeros((self.local_batch,), np.int32)
    mask = np.zeros((self.local_batch,), bool)
    first = int(index) * self.global_batch + self.offset
    positions = range(first, min(first + self.local_batch, len(self.indices)))
    items = self.source.read([self.indices[p] for p in positions])
    for j, (position, (image, label)) in enumerate(zip(positions, items)):
      labels[j] = label
      views[j] = self.spec.views(image, (*self.seed_prefix, position))
      mask[j] = True
    return {"views": views, "label": labels, "mask": mask}


@dataclasses.dataclass
class FixedViewSet:
  """A finite, re-iterable set of batches with one pipeline-1 and one pipeline-2 view per image.

  Iterating twice gives the same batches: {'views': uint8 (B, 2, R, R, 3), 'label': int32 (B,),
  'mask': bool (B,)}, 'mask' False on the padding of the last batch. With a mesh, batches are global
  jax.Arrays sharded over 'data'; without one, this host's numpy slices. The host part of the views
  is fixed by the seed words; the consumer gives `device_augment` a key folded from the same words
  and the batch index, so the whole set is deterministic.
  """

  source: sources.ImageSource
  indices: np.ndarray
  spec: ViewSpec
  seed_prefix: tuple[int, ...]
  global_batch_size: int
  local_batch_size: int
  process_index: int
  mesh: Mesh | None = None
  threads: int = 2

  @property
  def num_images(self) -> int:
    return len(self.indices)

  def __len__(self) -> int:
    return math.ceil(len(self.indices) / self.global_batch_size)

  def __iter__(self) -> Iterator[dict]:
    make_batch = _FixedBatch(self.source, self.indices, self.spec, self.seed_prefix,
                             self.local_batch_size, self.global_batch_size, self.process_index)
    ds = grain.MapDataset.range(len(self)).map(make_batch)
    for batch in ds.to_iter_dataset(_read_options(0, self.threads)):
      yield to_global(batch, self.mesh) if self.mesh is not None else batch


def _fixed_set(data, source, indices, *, resolution, seed_prefix, global_batch_size, mesh,
               process_index, process_count, device_count) -> FixedViewSet:
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if device_count is None:
    device_count = mesh.devices.size if mesh is not None else jax.device_count()
  local_batch = local_batch_size(global_batch_size, device_count=device_count,
                                 process_count=process_count)
  return FixedViewSet(source=source, indices=np.asarray(indices, np.int64),
                      spec=ViewSpec.from_config(data, resolution, 2), seed_prefix=seed_prefix,
                      global_batch_size=global_batch_size, local_batch_size=local_batch,
                      process_index=process_index, mesh=mesh)


def rating_set(data: ml_collections.ConfigDict, *, resolution: int, seed: int, rating_index: int,
               global_batch_size: int, mesh: Mesh | None = None,
               source: sources.ImageSource | None = None, process_index: int | None = None,
               process_count: int | None = None,
               device_count: int | None = None) -> FixedViewSet:
  """Every image of config.data.rating_split (docs/method.md#d11: by default training images that
  block training never sees), in order, with views drawn from (seed, rating_index, image
  position)."""
  source = source if source is not None else open_split(data, data.rating_split)
  return _fixed_set(data, source, np.arange(len(source)), resolution=resolution,
                    seed_prefix=(seed, RATING, rating_index), global_batch_size=global_batch_size,
                    mesh=mesh, process_index=process_index, process_count=process_count,
                    device_count=device_count)


def calibration_set(data: ml_collections.ConfigDict, *, resolution: int, seed: int,
                    global_batch_size: int, mesh: Mesh | None = None,
                    source: sources.ImageSource | None = None, process_index: int | None = None,
                    process_count: int | None = None,
                    device_count: int | None = None) -> FixedViewSet:
  """config.data.calibration_images fixed training images (docs/method.md#d6), the same for the
  whole run: the first ones of a permutation of the training split seeded with `seed`, with fixed
  views."""
  source = source if source is not None else open_split(data, data.train_split)
  count = int(data.calibration_images)
  if count > len(source):
    raise ValueError(f"config.data.calibration_images = {count} is more than the {len(source)} "
                     f"images of the training split {data.train_split!r}.")
  rng = np.random.default_rng(np.random.SeedSequence([seed, CALIBRATION]))
  indices = np.sort(rng.permutation(len(source))[:count])
  return _fixed_set(data, source, indices, resolution=resolution,
                    seed_prefix=(seed, CALIBRATION), global_batch_size=global_batch_size,
                    mesh=mesh, process_index=process_index, process_count=process_count,
                    device_count=device_count)


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), ("data",))


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles every host's slice of a batch into global arrays sharded over mesh axis 'data'."""
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for key, value in batch.items()}
