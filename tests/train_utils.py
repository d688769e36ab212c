"""Shared set-up of the training tests: a tiny config on a small embedded data set."""

import os

import jax
import numpy as np
from test_data_embedded import small_idx_folder

from bossnas_jax.data import embedded
from configs import hytra


def tiny_config(data_dir: str, **train):
  """The demo experiment on 64 training images: 4 micro-batches of 16 per epoch."""
  c = hytra.get_config("demo")
  c.data.data_dir = data_dir
  c.data.train_split = "train[:64]"
  c.data.rating_split = "train[-16:]"
  c.data.calibration_images = 16
  c.train.batch_size = 16
  c.train.accumulate_steps = 2
  c.train.epochs_per_block = 2
  c.train.checkpoint_every_steps = 1
  c.train.keep_checkpoints = 3
  c.rating.batch_size = 16
  c.rating.rate_every_epochs = 2  # Only after the last epoch; test_train rates within a block.
  for k, v in train.items():
    c.train[k] = v
  return c


def prepare_data(root: str) -> str:
  """A prepared embedded data set of 96 training and 16 test images under `root`."""
  folder = small_idx_folder(os.path.join(root, "idx"), train=96, test=16)
  return embedded.prepare_embedded(os.path.join(root, "cache"), idx_dir=folder)


def flat(tree) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}


def assert_trees_equal(a, b):
  fa, fb = flat(a), flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
