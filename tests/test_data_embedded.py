"""The embedded Fashion-MNIST builder: IDX files -> TFDS array_record, prepared once."""

import gzip
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from bossnas_jax.data import embedded, sources

IDX_DIR = embedded.DEFAULT_IDX_DIR
needs_idx = pytest.mark.skipif(
    not os.path.isdir(IDX_DIR),
    reason=f"{IDX_DIR} is missing: `apt-get install dataset-fashion-mnist`.")


def write_idx(path, array):
  """Writes a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
  header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def small_idx_folder(folder, train=300, test=60, gz=False):
  """A user-named folder with the four IDX files holding the first images of each split."""
  os.makedirs(folder, exist_ok=True)
  for split, count in (("train", train), ("test", test)):
    images, labels = embedded.read_split(IDX_DIR, split)
    image_file, label_file = embedded.IDX_FILES[split]
    if not gz:
      image_file, label_file = image_file[:-3], label_file[:-3]
    write_idx(os.path.join(folder, image_file), images[:count])
    write_idx(os.path.join(folder, label_file), labels[:count])
  return folder


@needs_idx
def test_read_idx_gives_the_official_split():
  images, labels = embedded.read_split(IDX_DIR, "train")
  assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
  assert labels.shape == (60000,) and set(np.unique(labels)) == set(range(10))
  assert np.bincount(labels).tolist() == [6000] * 10  # Fashion-MNIST is balanced.
  images, labels = embedded.read_split(IDX_DIR, "test")
  assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10


def test_png_encoder_round_trips():
  image = np.random.default_rng(0).integers(0, 256, (28, 17), dtype=np.uint8)
  decoded = Image.open(io.BytesIO(embedded.encode_png_grey(image)))
  assert decoded.mode == "L" and np.array_equal(np.asarray(decoded), image)


@needs_idx
def test_prepare_from_a_clean_cache_once(tmp_path):
  cache = str(tmp_path / "cache")
  assert embedded.prepare_embedded(cache) == cache
  # Prepared once: the second call finds the set and never looks for the (absent) IDX folder.
  assert embedded.prepare_embedded(cache, idx_dir=str(tmp_path / "not-needed-any-more")) == cache
  train = sources.open_source(embedded.NAME, "train", cache)
  test = sources.open_source(embedded.NAME, "test", cache)
  assert (len(train), len(test), train.num_classes) == (60000, 10000, 10)
  images, labels = embedded.read_split(IDX_DIR, "test")
  for i in (0, 1234, 9999):  # Records keep the order of the IDX files.
    encoded, label = test[i]
    assert isinstance(encoded, bytes) and label == labels[i]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encoded))), images[i])


@needs_idx
@pytest.mark.parametrize("gz", [True, False])
def test_prepare_from_a_user_named_folder(tmp_path, gz):
  folder = small_idx_folder(str(tmp_path / "idx"), gz=gz)
  cache = embedded.prepare_embedded(str(tmp_path / "cache"), idx_dir=folder)
  assert len(sources.open_source(embedded.NAME, "train", cache)) == 300
  assert len(sources.open_source(embedded.NAME, "test[:50]", cache)) == 50


@needs_idx
def test_environment_names_the_folders(tmp_path, monkeypatch):
  folder = small_idx_folder(str(tmp_path / "idx"), train=40, test=10)
  monkeypatch.setenv("BOSSNAS_FASHION_MNIST_DIR", folder)
  monkeypatch.setenv("BOSSNAS_DATA_CACHE", str(tmp_path / "env-cache"))
  assert embedded.default_idx_dir() == folder
  source = sources.open_source(embedded.NAME, "train", None)  # data_dir None: the cache.
  assert len(source) == 40 and source.data_dir == str(tmp_path / "env-cache")


def test_missing_folder_is_a_clear_error(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(embedded.EmbeddedDataError) as info:
    embedded.prepare_embedded(str(tmp_path / "cache"), idx_dir=missing)
  message = str(info.value)
  assert missing in message and "does not exist" in message
  assert "apt-get install dataset-fashion-mnist" in message
  assert "BOSSNAS_FASHION_MNIST_DIR" in message


@needs_idx
def test_missing_file_is_a_clear_error(tmp_path):
  folder = small_idx_folder(str(tmp_path / "idx"), train=20, test=10)
  os.remove(os.path.join(folder, "t10k-labels-idx1-ubyte"))
  with pytest.raises(embedded.EmbeddedDataError) as info:
    embedded.prepare_embedded(str(tmp_path / "cache"), idx_dir=folder)
  assert "t10k-labels-idx1-ubyte.gz" in str(info.value) and folder in str(info.value)
  assert "apt-get install dataset-fashion-mnist" in str(info.value)
  assert not os.path.exists(os.path.join(tmp_path, "cache", embedded.NAME, "1.0.0"))


@needs_idx
def test_malformed_file_is_a_clear_error(tmp_path):
  folder = small_idx_folder(str(tmp_path / "idx"), train=20, test=10)
  with open(os.path.join(folder, "train-images-idx3-ubyte"), "wb") as f:
    f.write(b"not an idx file")
  with pytest.raises(embedded.EmbeddedDataError, match="not an IDX file"):
    embedded.prepare_embedded(str(tmp_path / "cache"), idx_dir=folder)
  shutil.rmtree(folder)
