"""What every input pipeline shares: opening a split, cutting each global batch into host slices,
and running a batch function as a Grain iterator.

A pipeline is a function `make_batch(k) -> dict of numpy arrays`, this host's slice of global batch
k; `iterate` maps it over k = 0, 1, ... with Grain, which makes the iterator resumable
(`get_state()` / `set_state()`) and reads ahead in threads or worker processes. Host h of H takes
positions [h G/H, (h+1) G/H) of every global batch of G images, the order of the mesh's 'data'
axis, so `to_global` puts the slices back together as one array sharded over the devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grain
import jax
import ml_collections
import numpy as np

from bossnas_jax.data import sources
from bossnas_jax.infra import errors, parallel


def open_split(data: ml_collections.ConfigDict, split: str) -> sources.ImageSource:
  """Opens `split` of the configured data set (config.data.name / data_dir)."""
  return sources.open_source(data.name, split, data.data_dir)


def steps_per_epoch(num_images: int, global_batch_size: int,
                    split: str = "the training split") -> int:
  """Full global batches per epoch (the remainder is dropped)."""
  steps = num_images // global_batch_size
  if steps == 0:
    raise errors.ConfigError(
        f"config.train.batch_size = {global_batch_size} is larger than the {num_images} images "
        f"of {split}; lower it or use a larger split.")
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
class HostSlice:
  """This host's part of every global batch: positions [offset, offset + local_batch)."""

  global_batch: int
  local_batch: int
  offset: int

  @classmethod
  def create(cls, global_batch_size: int, *, process_index: int | None = None,
             process_count: int | None = None, device_count: int | None = None) -> HostSlice:
    """Processes and devices default to JAX's (they are arguments so that tests can play any
    host of a larger system)."""
    process_index = jax.process_index() if process_index is None else int(process_index)
    process_count = jax.process_count() if process_count is None else int(process_count)
    device_count = jax.device_count() if device_count is None else int(device_count)
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
    local = local_batch_size(int(global_batch_size), device_count=device_count,
                             process_count=process_count)
    return cls(int(global_batch_size), local, process_index * local)

  def positions(self, batch_index: int, num_items: int) -> range:
    """This host's positions of global batch `batch_index` over a list of `num_items` items read
    in order; shorter than local_batch (possibly empty) where the list ends, for padding."""
    first = int(batch_index) * self.global_batch + self.offset
    return range(first, min(first + self.local_batch, num_items))


def iterate(make_batch: Callable[[int], dict], num_batches: int, *, worker_count: int = 0,
            threads: int | None = None) -> grain.DatasetIterator:
  """A resumable iterator over make_batch(0), ..., make_batch(num_batches - 1).

  `worker_count` > 0 runs make_batch in that many processes; otherwise `threads` threads (default
  2) read ahead.
  """
  # Elements are whole batches: a few in flight is enough, and bounds the memory.
  threads = threads if threads is not None else (2 if worker_count <= 0 else 1)
  options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, threads))
  ds = grain.MapDataset.range(int(num_batches)).map(make_batch).to_iter_dataset(options)
  if worker_count > 0:
    from absl import flags  # Grain's worker processes read absl flags (google/grain#1355).

    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                     per_worker_buffer_size=1))
  return iter(ds)


def to_global(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Every host's slice of a batch assembled into global arrays sharded over mesh axis 'data'."""
  return {key: parallel.host_batch_to_global(np.asarray(value), mesh)
          for key, value in batch.items()}
