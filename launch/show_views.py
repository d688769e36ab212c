r"""Draws one source image and its 8 augmented views (docs/method.md#augmentations), as the
training step sees them.

  python launch/show_views.py --config configs/hytra.py:demo --out views.png
  python launch/show_views.py --config configs/hytra.py --config.data.data_dir=DIR --out views.png
  python launch/show_views.py --config configs/hytra.py --image photo.jpg --out views.png

Top row: pipeline 1 (blur p = 0.1, never solarised); bottom row: pipeline 2 (always blurred,
solarised with p = 0.2). Each title lists the steps that the view drew: J colour jitter, G
grayscale, B blur with its sigma, S solarize.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from bossnas_jax.data import batching, device_augment, host_augment, normalize, pipeline
from bossnas_jax.infra import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (configs/hytra.py).")
_OUT = flags.DEFINE_string("out", "views.png", "Where to write the picture (PNG).")
_INDEX = flags.DEFINE_integer("index", 0, "Index of the image in config.data.train_split.")
_IMAGE = flags.DEFINE_string("image", None, "An image file to use instead of the data set.")
_SEED = flags.DEFINE_integer("seed", None, "Random seed (default: config.seed).")


def view_title(params: dict, view: int, pipeline_size: int) -> str:
  steps = [name for name, key in (("J", "jitter"), ("G", "grayscale")) if params[key][0, view]]
  if params["blur"][0, view]:
    steps.append(f"B{float(params['sigma'][0, view]):.1f}")
  if params["solarize"][0, view]:
    steps.append("S")
  pipe = 1 if view < pipeline_size else 2
  return f"p{pipe} view {view % pipeline_size}: {' '.join(steps) or '-'}"


def main(argv) -> None:
  del argv
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if not _OUT.value.lower().endswith(".png") or os.path.isdir(_OUT.value):
    cli.fail(f"--out={_OUT.value}: give the path of a .png file to write, e.g. views.png.")
  config = _CONFIG.value
  data, resolution = config.data, int(config.model.resolution)
  seed = config.seed if _SEED.value is None else _SEED.value
  if _IMAGE.value:
    try:
      with open(_IMAGE.value, "rb") as f:
        image, caption = f.read(), _IMAGE.value
      host_augment.open_image(image).load()
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError.
      cli.fail(f"--image={_IMAGE.value}: not an image file PIL can read "
               f"({type(e).__name__}: {str(e).split(' <')[0]}).")
  else:
    source = batching.open_split(data, data.train_split)
    if not 0 <= _INDEX.value < len(source):
      cli.fail(f"--index={_INDEX.value}: {data.name}:{data.train_split} has {len(source):,} "
               f"images; give an index from 0 to {len(source) - 1}.")
    image, label = source[_INDEX.value]
    caption = f"{data.name} {data.train_split} #{_INDEX.value}, label {label}"
  num_views = 2 * int(data.num_pairs)
  spec = pipeline.ViewSpec.from_config(data, resolution, num_views)
  views = spec.views(image, (seed, pipeline.TRAIN, 0, 0, _INDEX.value))  # Host part.
  key = jax.random.key(seed)
  probs = dict(blur_prob=tuple(data.blur_prob), solarize_prob=tuple(data.solarize_prob))
  out = device_augment.device_augment(key, views[None], **probs)[0]  # Device part.
  params = jax.device_get(device_augment.augmentation_params(key, 1, num_views, **probs))
  std, mean = np.asarray(normalize.IMAGENET_STD), np.asarray(normalize.IMAGENET_MEAN)
  shown = np.clip(np.asarray(out) * std + mean, 0.0, 1.0)

  half = num_views // 2
  original = np.asarray(host_augment.open_image(image).convert("RGB"))
  fig, axes = plt.subplots(2, half + 1, figsize=(2.6 * (half + 1), 6.0), layout="constrained")
  grid = axes[:, 0]
  grid[0].imshow(original, interpolation="nearest")
  grid[0].set_title("source", fontsize=9)
  grid[1].imshow(views[0], interpolation="nearest")
  grid[1].set_title("p1 view 0, host part only", fontsize=9)
  for v in range(num_views):
    ax = axes[v // half, 1 + v % half]
    ax.imshow(shown[v], interpolation="nearest")
    ax.set_title(view_title(params, v, half), fontsize=9)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(f"{caption} ({original.shape[1]}x{original.shape[0]}) -> {num_views} views at "
               f"{resolution}", fontsize=10)
  try:
    fig.savefig(_OUT.value, dpi=100)
  except OSError as e:
    cli.fail(f"--out={_OUT.value}: cannot write the picture there ({e.strerror or e}).")
  print(f"Wrote {_OUT.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
