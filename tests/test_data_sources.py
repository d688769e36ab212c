"""Opening TFDS sources: the embedded set, imagenet2012 (mock_data), and every error message."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from test_data_embedded import IDX_DIR, small_idx_folder

from bossnas_jax.data import embedded, sources

pytestmark = pytest.mark.skipif(
    not os.path.isdir(IDX_DIR),
    reason=f"{IDX_DIR} is missing: `apt-get install dataset-fashion-mnist`.")


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
  root = tmp_path_factory.mktemp("sources")
  folder = small_idx_folder(str(root / "idx"), train=120, test=30)
  return embedded.prepare_embedded(str(root / "cache"), idx_dir=folder)


def test_embedded_source_reads_encoded_images_and_labels(small_cache):
  source = sources.open_source(embedded.NAME, "train[:-20]", small_cache)
  assert len(source) == 100 and source.num_classes == 10
  image, label = source[3]
  assert isinstance(image, bytes) and image.startswith(b"\x89PNG") and 0 <= label < 10
  _, labels = embedded.read_split(IDX_DIR, "train")
  assert [source[i][1] for i in range(10)] == labels[:10].tolist()
  rating = sources.open_source(embedded.NAME, "train[-20:]", small_cache)
  assert rating[0][1] == labels[100]  # The held-out slice follows the training slice.


def test_imagenet2012_with_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    source = sources.open_source("imagenet2012", "train", str(tmp_path))
    assert len(source) == 12 and source.num_classes == 1000
    image, label = source[5]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    assert 0 <= label < 1000


def test_split_names():
  assert sources.split_names("train[:-10000]") == ["train"]
  assert sources.split_names("train[:10%]+validation") == ["train", "validation"]
  with pytest.raises(sources.DataSourceError, match="not a TFDS split spec"):
    sources.split_names("train;rm")


def test_missing_data_dir(tmp_path):
  missing = str(tmp_path / "no-such-folder")
  with pytest.raises(sources.DataSourceError) as info:
    sources.open_source("imagenet2012", "train", missing)
  message = str(info.value)
  assert missing in message and "does not exist" in message and "imagenet2012" in message
  assert "tfds build imagenet2012" in message and "--file_format=array_record" in message


def test_bucket_without_gcsfs(without_gcsfs):
  out = without_gcsfs("""
from bossnas_jax.data import sources
try:
  sources.open_source("imagenet2012", "train", "gs://some-bucket/tensorflow_datasets")
except sources.DataSourceError as e:
  print(e)
""")
  assert "gs://some-bucket/tensorflow_datasets" in out
  assert "bossnas_jax[gcs]" in out


def test_data_dir_without_the_prepared_files(tmp_path):
  (tmp_path / "imagenet2012" / "5.1.0").mkdir(parents=True)  # Started, never finished.
  with pytest.raises(sources.DataSourceError) as info:
    sources.open_source("imagenet2012", "train", str(tmp_path))
  message = str(info.value)
  assert "not prepared" in message and str(tmp_path) in message and "dataset_info.json" in message
  assert "5.1.0" in message and "tfds build imagenet2012" in message and "manual_dir" in message


def test_unknown_data_set(tmp_path):
  with pytest.raises(sources.DataSourceError) as info:
    sources.open_source("no_such_photos", "train", str(tmp_path))
  message = str(info.value)
  assert "Unknown data set 'no_such_photos'" in message
  assert os.path.join(str(tmp_path), "no_such_photos") in message and "config.data.name" in message


def test_missing_split(small_cache):
  with pytest.raises(sources.DataSourceError) as info:
    sources.open_source(embedded.NAME, "validation", small_cache)
  message = str(info.value)
  assert "no split 'validation'" in message and "'train': 120" in message
  assert "--split of launch/evaluate.py" in message  # Not only a config field evaluate lacks.
  assert "'test': 30" in message and small_cache in message and "rating_split" in message


def test_slice_outside_the_split(small_cache):
  with pytest.raises(sources.DataSourceError) as info:
    sources.open_source(embedded.NAME, "train[500:]", small_cache)
  assert "train[500:]" in str(info.value) and "'train': 120" in str(info.value)


def _as_other_data_set(cache, root, name, file_format):
  """A copy of the small prepared set under another name, declared as `file_format`."""
  source = os.path.join(cache, embedded.NAME, "1.0.0")
  target = os.path.join(root, name, "1.0.0")
  shutil.copytree(source, target)
  for file in os.listdir(target):
    if embedded.NAME in file:
      new = file.replace(embedded.NAME, name).replace("array_record", file_format)
      os.rename(os.path.join(target, file), os.path.join(target, new))
  info_path = os.path.join(target, "dataset_info.json")
  with open(info_path) as f:
    info = json.load(f)
  info.update(name=name, fileFormat=file_format)
  with open(info_path, "w") as f:
    json.dump(info, f)
  return root


def test_any_prepared_data_set_by_name(small_cache, tmp_path):
  data_dir = _as_other_data_set(small_cache, str(tmp_path), "my_photos", "array_record")
  source = sources.open_source("my_photos", "test", data_dir)
  assert len(source) == 30 and isinstance(source[0][0], bytes)


@pytest.mark.skipif(sources._tensorflow_installed(), reason="TensorFlow is installed here.")
def test_tfrecord_without_tensorflow(small_cache, tmp_path):
  data_dir = _as_other_data_set(small_cache, str(tmp_path), "my_records", "tfrecord")
  with pytest.raises(sources.DataSourceError) as info:
    sources.open_source("my_records", "train", data_dir)
  message = str(info.value)
  assert "stored as tfrecord" in message and "TensorFlow is not installed" in message
  assert os.path.join(data_dir, "my_records", "1.0.0") in message
  assert "bossnas_jax[tensorflow]" in message and "--file_format=array_record" in message


def test_a_named_data_dir_must_exist(small_cache, tmp_path):
  missing = str(tmp_path / "typo")  # (Other data sets: test_missing_data_dir.)
  with pytest.raises(sources.DataSourceError, match="data_dir .*typo.* does not exist"):
    sources.open_source(embedded.NAME, "train", missing)
  assert not os.path.exists(missing)  # Nothing was created there.


def test_read_fetches_a_batch_as_indexing_does(small_cache):
  source = sources.open_source(embedded.NAME, "train", small_cache)
  indices = [7, 0, 99, 7]
  assert [(bytes(i), label) for i, label in source.read(indices)] == [
      (bytes(source[i][0]), source[i][1]) for i in indices]
