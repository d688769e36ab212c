r"""Draws one source image and its 8 augmented views (docs/method.md#augmentations), as the
training step sees them (`bossnas_jax/data/view_figure.py` says how to read the picture).

  python launch/show_views.py --config configs/hytra.py:demo --out views.png
  python launch/show_views.py --config configs/hytra.py --config.data.data_dir=DIR --out views.png
  python launch/show_views.py --config configs/hytra.py --image photo.jpg --out views.png
"""

import os

from absl import flags
from ml_collections import config_flags

from bossnas_jax.data import batching, host_augment, view_figure
from bossnas_jax.infra import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (configs/hytra.py).")
_OUT = flags.DEFINE_string("out", "views.png", "Where to write the picture (PNG).")
_INDEX = flags.DEFINE_integer("index", 0, "Index of the image in config.data.train_split.")
_IMAGE = flags.DEFINE_string("image", None, "An image file to use instead of the data set.")
_SEED = flags.DEFINE_integer("seed", None, "Random seed (default: config.seed).")


def main(argv) -> None:
  del argv
  if not _OUT.value.lower().endswith(".png") or os.path.isdir(_OUT.value):
    cli.fail(f"--out={_OUT.value}: give the path of a .png file to write, e.g. views.png.")
  config = _CONFIG.value
  data = config.data
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
  seed = config.seed if _SEED.value is None else _SEED.value
  fig = view_figure.draw(data, int(config.model.resolution), image, caption, seed, _INDEX.value)
  try:
    fig.savefig(_OUT.value, dpi=100)
  except OSError as e:
    cli.fail(f"--out={_OUT.value}: cannot write the picture there ({e.strerror or e}).")
  print(f"Wrote {_OUT.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
