"""The grain loader: batches, seeds (docs/method.md#d8), host sharding, resume, global arrays,
rating/calibration."""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import PartitionSpec as P
from test_data_embedded import IDX_DIR, small_idx_folder

from bossnas_jax.data import batching, embedded, pipeline, sources
from bossnas_jax.infra import parallel
from configs import hytra

pytestmark = pytest.mark.skipif(
    not os.path.isdir(IDX_DIR),
    reason=f"{IDX_DIR} is missing: `apt-get install dataset-fashion-mnist`.")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """The demo's data config on a small embedded set: 200 training + 40 rating images."""
  root = tmp_path_factory.mktemp("pipeline")
  folder = small_idx_folder(str(root / "idx"), train=240, test=20)
  config = hytra.get_config("demo").data
  config.data_dir = embedded.prepare_embedded(str(root / "cache"), idx_dir=folder)
  config.train_split = "train[:-40]"
  config.rating_split = "train[-40:]"
  config.calibration_images = 24
  return config


def batches(iterator, count):
  return [next(iterator) for _ in range(count)]


def make(data, **kwargs):
  arguments = dict(resolution=16, seed=0, block=0, global_batch_size=32, num_epochs=2,
                   device_count=8)
  arguments.update(kwargs)
  return pipeline.train_iterator(data, **arguments)


def test_training_batches(data):
  iterator = make(data)
  batch = next(iterator)
  assert batch["views"].shape == (32, 8, 16, 16, 3) and batch["views"].dtype == np.uint8
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  assert set(batch["label"].tolist()) <= set(range(10))
  # 200 images, batch 32: 6 full batches per epoch (8 images dropped), 2 epochs.
  assert len(batches(iterator, 11)) == 11
  with pytest.raises(StopIteration):
    next(iterator)


def test_epoch_orders_follow_seed_block_and_epoch():
  orders = {(s, b, e): pipeline.epoch_order(200, s, b, e).tobytes()
            for s in (0, 1) for b in (0, 1) for e in (0, 1)}
  assert len(set(orders.values())) == 8  # Every (seed, block, epoch) reads its own order.
  assert pipeline.epoch_order(200, 0, 1, 1).tobytes() == orders[(0, 1, 1)]
  assert sorted(pipeline.epoch_order(200, 0, 0, 0)) == list(range(200))


def test_batches_follow_the_epoch_order(data):
  source = batching.open_split(data, data.train_split)
  labels = np.array([source[i][1] for i in range(len(source))])
  epoch_batches = batches(make(data, block=2), 12)
  for epoch in (0, 1):
    order = pipeline.epoch_order(len(source), 0, 2, epoch)
    got = np.concatenate([b["label"] for b in epoch_batches[6 * epoch:6 * epoch + 6]])
    assert np.array_equal(got, labels[order[:192]])


def test_same_arguments_same_batches_other_block_other_batches(data):
  first = batches(make(data), 2)
  again = batches(make(data), 2)
  other = batches(make(data, block=1), 2)
  for a, b in zip(first, again, strict=True):
    assert np.array_equal(a["views"], b["views"]) and np.array_equal(a["label"], b["label"])
  assert not np.array_equal(first[0]["views"], other[0]["views"])


def test_hosts_take_their_slices_of_the_same_global_batch(data):
  whole = batches(make(data), 2)
  host0 = batches(make(data, process_index=0, process_count=2), 2)
  host1 = batches(make(data, process_index=1, process_count=2), 2)
  for w, a, b in zip(whole, host0, host1, strict=True):
    assert a["views"].shape[0] == 16
    assert np.array_equal(w["views"], np.concatenate([a["views"], b["views"]]))


def test_resume_mid_epoch_continues_with_the_next_batch(data):
  reference = batches(make(data), 9)  # Crosses the epoch boundary after batch 6.
  iterator = make(data)
  batches(iterator, 4)
  state = json.loads(json.dumps(iterator.get_state()))  # As stored in the checkpoint.
  resumed = make(data)
  resumed.set_state(state)
  for expected in reference[4:]:
    got = next(resumed)
    assert np.array_equal(got["views"], expected["views"])
    assert np.array_equal(got["label"], expected["label"])


def test_worker_processes_give_the_same_batches(data):
  reference = batches(make(data), 3)
  iterator = make(data, worker_count=1)
  try:
    for expected in reference:
      assert np.array_equal(next(iterator)["views"], expected["views"])
  finally:
    iterator.close()


def test_batch_must_divide_the_devices(data):
  with pytest.raises(ValueError, match="multiple of the number of devices \\(8\\)"):
    make(data, global_batch_size=20)
  with pytest.raises(ValueError, match="larger than the 200 images"):
    make(data, global_batch_size=256)


def test_global_arrays_over_the_data_mesh(data):
  mesh = parallel.data_mesh()
  batch = batching.to_global(next(make(data)), mesh)
  views = batch["views"]
  assert views.shape == (32, 8, 16, 16, 3) and views.sharding.spec == P("data")
  assert len(views.addressable_shards) == jax.device_count()
  assert {s.data.shape for s in views.addressable_shards} == {(4, 8, 16, 16, 3)}
  assert batch["label"].sharding.spec == P("data")


def test_rating_set(data):
  source = batching.open_split(data, data.rating_split)
  rating = pipeline.rating_set(data, resolution=16, seed=0, rating_index=3, global_batch_size=16,
                               device_count=8)
  assert len(rating) == 3 and rating.num_images == 40
  first, again = list(rating), list(rating)
  assert [b["views"].shape for b in first] == [(16, 2, 16, 16, 3)] * 3
  assert [int(b["mask"].sum()) for b in first] == [16, 16, 8]
  labels = np.concatenate([b["label"][b["mask"]] for b in first])
  assert labels.tolist() == [source[i][1] for i in range(40)]  # Every image, in order.
  for a, b in zip(first, again, strict=True):
    assert np.array_equal(a["views"], b["views"])
  other = next(iter(pipeline.rating_set(data, resolution=16, seed=0, rating_index=4,
                                        global_batch_size=16, device_count=8)))
  assert not np.array_equal(other["views"], first[0]["views"])
  # Global batches over the mesh.
  mesh = parallel.data_mesh()
  sharded = next(iter(pipeline.rating_set(data, resolution=16, seed=0, rating_index=3,
                                          global_batch_size=16, mesh=mesh)))
  assert isinstance(sharded["views"], jax.Array) and sharded["mask"].sharding.spec == P("data")
  assert np.array_equal(np.asarray(sharded["views"]), first[0]["views"])


def test_calibration_set_is_fixed(data):
  make_set = lambda seed: pipeline.calibration_set(data, resolution=16, seed=seed,
                                                   global_batch_size=16, device_count=8)
  calibration = make_set(0)
  assert calibration.num_images == 24 and len(calibration) == 2
  assert len(set(calibration.indices.tolist())) == 24 and calibration.indices.max() < 200
  assert np.array_equal(calibration.indices, make_set(0).indices)
  assert not np.array_equal(calibration.indices, make_set(1).indices)
  a, b = list(calibration), list(make_set(0))
  assert np.array_equal(a[1]["views"], b[1]["views"]) and int(a[1]["mask"].sum()) == 8
  data_too_small = data.copy_and_resolve_references()
  data_too_small.calibration_images = 500
  with pytest.raises(ValueError, match="calibration_images = 500"):
    pipeline.calibration_set(data_too_small, resolution=16, seed=0, global_batch_size=16,
                             device_count=8)


def test_imagenet2012_at_224_with_mock_data(tmp_path):
  config = hytra.get_config().data  # The full-size data config.
  config.data_dir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=16):
    source = sources.open_source("imagenet2012", "train", str(tmp_path))
    iterator = pipeline.train_iterator(config, resolution=224, seed=0, block=0,
                                       global_batch_size=8, num_epochs=1, source=source,
                                       worker_count=0)
    batch = next(iterator)
    assert batch["views"].shape == (8, 8, 224, 224, 3) and batch["label"].max() < 1000
    rating = pipeline.rating_set(config, resolution=224, seed=0, rating_index=0,
                                 global_batch_size=8, source=source)
    assert [b["views"].shape for b in rating] == [(8, 2, 224, 224, 3)] * 2
