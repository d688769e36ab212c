"""Grain input pipelines: the resumable multi-view training iterator, rating and calibration sets.

Randomness (docs/method.md#d8): the order of epoch e of block b is a permutation seeded with
(seed, b, e); the crop and flip of the image at position p of that order are seeded with
(seed, b, e, p). Data order and views therefore differ per block and per epoch, are reproducible
from the seed, and do not depend on the number of hosts or workers. Each global batch is the next
`global_batch_size` positions of the epoch's order; host h takes its contiguous slice of it
(`batching.to_global` puts the slices back together as one array sharded over the devices). Every
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
import ml_collections
import numpy as np
from jax.sharding import Mesh

from bossnas_jax.data import batching, host_augment, sources

# Stream ids, folded into every seed so that the three uses never share random numbers.
TRAIN, RATING, CALIBRATION = 0, 1, 2


def epoch_seed(seed: int, block: int, epoch: int) -> int:
  """The shuffle seed of epoch `epoch` of block `block` (docs/method.md#d8)."""
  return int(np.random.SeedSequence([seed, TRAIN, block, epoch]).generate_state(1)[0])


def train_view_seed(seed: int, block: int, epoch: int, position: int) -> tuple[int, ...]:
  """The seed words of the host-part views of the image at `position` of epoch `epoch`'s order of
  block `block` (docs/method.md#d8)."""
  return (seed, TRAIN, block, epoch, int(position))


def epoch_order(num_images: int, seed: int, block: int, epoch: int) -> np.ndarray:
  """The permutation of 0..num_images-1 that epoch `epoch` of block `block` reads."""
  return np.random.default_rng(epoch_seed(seed, block, epoch)).permutation(num_images)


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


class _TrainBatch:
  """Batch k of a host's training stream -> {'views', 'label'} (a grain map over batch indices)."""

  def __init__(self, source, spec: ViewSpec, *, seed: int, block: int, steps: int,
               host: batching.HostSlice, first_epoch: int):
    self.source, self.spec, self.seed, self.block = source, spec, seed, block
    self.steps, self.host, self.first_epoch = steps, host, first_epoch
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
    positions = self.host.positions(step, len(order))
    r = self.spec.resolution
    views = np.empty((len(positions), self.spec.num_views, r, r, 3), np.uint8)
    labels = np.empty((len(positions),), np.int32)
    for j, (image, label) in enumerate(self.source.read(order[positions.start:positions.stop])):
      labels[j] = label
      views[j] = self.spec.views(image, train_view_seed(self.seed, self.block, epoch,
                                                           positions[j]))
    return {"views": views, "label": labels}


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
  source = source if source is not None else batching.open_split(data, data.train_split)
  host = batching.HostSlice.create(global_batch_size, process_index=process_index,
                                   process_count=process_count, device_count=device_count)
  steps = batching.steps_per_epoch(len(source), global_batch_size)
  spec = ViewSpec.from_config(data, resolution, 2 * int(data.num_pairs))
  make_batch = _TrainBatch(source, spec, seed=seed, block=block, steps=steps, host=host,
                           first_epoch=first_epoch)
  worker_count = int(data.worker_count) if worker_count is None else worker_count
  return batching.iterate(make_batch, num_epochs * steps, worker_count=worker_count,
                          threads=threads)


class _FixedBatch:
  """Batch k of a fixed image list with 2 views each; positions past the list are masked out."""

  def __init__(self, source, indices: np.ndarray, spec: ViewSpec, seed_prefix: tuple[int, ...],
               host: batching.HostSlice):
    self.source, self.indices, self.spec, self.seed_prefix = source, indices, spec, seed_prefix
    self.host = host

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    r, local = self.spec.resolution, self.host.local_batch
    views = np.zeros((local, self.spec.num_views, r, r, 3), np.uint8)
    labels = np.zeros((local,), np.int32)
    mask = np.zeros((local,), bool)
    positions = self.host.positions(index, len(self.indices))
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
  host: batching.HostSlice
  mesh: Mesh | None = None
  threads: int = 2

  @property
  def num_images(self) -> int:
    return len(self.indices)

  def __len__(self) -> int:
    return math.ceil(len(self.indices) / self.host.global_batch)

  def __iter__(self) -> Iterator[dict]:
    make_batch = _FixedBatch(self.source, self.indices, self.spec, self.seed_prefix, self.host)
    for batch in batching.iterate(make_batch, len(self), threads=self.threads):
      yield batching.to_global(batch, self.mesh) if self.mesh is not None else batch


def _fixed_set(data, source, indices, *, resolution, seed_prefix, global_batch_size, mesh,
               process_index, process_count, device_count) -> FixedViewSet:
  if device_count is None and mesh is not None:
    device_count = mesh.devices.size
  host = batching.HostSlice.create(global_batch_size, process_index=process_index,
                                   process_count=process_count, device_count=device_count)
  return FixedViewSet(source=source, indices=np.asarray(indices, np.int64),
                      spec=ViewSpec.from_config(data, resolution, 2), seed_prefix=seed_prefix,
                      host=host, mesh=mesh)


def rating_set(data: ml_collections.ConfigDict, *, resolution: int, seed: int, rating_index: int,
               global_batch_size: int, mesh: Mesh | None = None,
               source: sources.ImageSource | None = None, process_index: int | None = None,
               process_count: int | None = None,
               device_count: int | None = None) -> FixedViewSet:
  """Every image of config.data.rating_split (docs/method.md#d11: by default training images that
  block training never sees), in order, with views drawn from (seed, rating_index, image
  position)."""
  source = source if source is not None else batching.open_split(data, data.rating_split)
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
  source = source if source is not None else batching.open_split(data, data.train_split)
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
