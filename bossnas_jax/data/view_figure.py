"""One source image and its augmented views, as the block-training step sees them, drawn as a
figure (docs/method.md#augmentations; `launch/show_views.py`).

Top row: pipeline 1 (blur p = 0.1, never solarised); bottom row: pipeline 2 (always blurred,
solarised with p = 0.2). Each title lists the steps that the view drew: J colour jitter, G
grayscale, B blur with its sigma, S solarize.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from bossnas_jax.data import device_augment, host_augment, normalize, pipeline


def view_title(params: dict, view: int, pipeline_size: int) -> str:
  steps = [name for name, key in (("J", "jitter"), ("G", "grayscale")) if params[key][0, view]]
  if params["blur"][0, view]:
    steps.append(f"B{float(params['sigma'][0, view]):.1f}")
  if params["solarize"][0, view]:
    steps.append("S")
  pipe = 1 if view < pipeline_size else 2
  return f"p{pipe} view {view % pipeline_size}: {' '.join(steps) or '-'}"


def augmented_views(data: ml_collections.ConfigDict, resolution: int, image, seed: int,
                    index: int):
  """(host-part views uint8 (V, R, R, 3), final views in [0, 1] (V, R, R, 3), the device part's
  drawn parameters) of an encoded image, with the seed words block 0's first epoch would give the
  image at position `index`."""
  num_views = 2 * int(data.num_pairs)
  spec = pipeline.ViewSpec.from_config(data, resolution, num_views)
  views = spec.views(image, pipeline.train_view_seed(seed, 0, 0, index))
  key = jax.random.key(seed)
  probs = dict(blur_prob=tuple(data.blur_prob), solarize_prob=tuple(data.solarize_prob))
  out = device_augment.device_augment(key, views[None], **probs)[0]
  params = jax.device_get(device_augment.augmentation_params(key, 1, num_views, **probs))
  std, mean = np.asarray(normalize.IMAGENET_STD), np.asarray(normalize.IMAGENET_MEAN)
  return views, np.clip(np.asarray(out) * std + mean, 0.0, 1.0), params


def draw(data: ml_collections.ConfigDict, resolution: int, image, caption: str, seed: int,
         index: int):
  """The figure: the source, the host part of view 0, and every final view."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  views, shown, params = augmented_views(data, resolution, image, seed, index)
  num_views, half = len(views), len(views) // 2
  original = np.asarray(host_augment.open_image(image).convert("RGB"))
  fig, axes = plt.subplots(2, half + 1, figsize=(2.6 * (half + 1), 6.0), layout="constrained")
  axes[0, 0].imshow(original, interpolation="nearest")
  axes[0, 0].set_title("source", fontsize=9)
  axes[1, 0].imshow(views[0], interpolation="nearest")
  axes[1, 0].set_title("p1 view 0, host part only", fontsize=9)
  for v in range(num_views):
    ax = axes[v // half, 1 + v % half]
    ax.imshow(shown[v], interpolation="nearest")
    ax.set_title(view_title(params, v, half), fontsize=9)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(f"{caption} ({original.shape[1]}x{original.shape[0]}) -> {num_views} views at "
               f"{resolution}", fontsize=10)
  return fig
