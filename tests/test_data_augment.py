"""The 8-view augmentation (docs/method.md#augmentations): host part (crop, flip) and device part
(jitter ... solarize)."""

import colorsys
import glob
import importlib.util
import io
import itertools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from bossnas_jax.data import device_augment as da
from bossnas_jax.data import host_augment as ha
from bossnas_jax.data import normalize


def foolbox_images(prefix):
  """Paths of the real sample photos the foolbox wheel ships (never imports foolbox)."""
  spec = importlib.util.find_spec("foolbox")
  if spec is None or spec.origin is None:
    pytest.skip("foolbox is not installed (`pip install --no-deps foolbox`); its sample photos "
                "are the colour test images.")
  paths = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "data", f"{prefix}_*")))
  if not paths:
    pytest.skip(f"foolbox ships no {prefix} samples here.")
  return paths


def jpeg(image, quality=90):
  buffer = io.BytesIO()
  image.save(buffer, "JPEG", quality=quality)
  return buffer.getvalue()


# ---- host part ----

def test_crop_box_follows_torchvision_ranges():
  rng = np.random.default_rng(0)
  boxes = np.array([ha.crop_box(rng, 500, 375) for _ in range(3000)])
  left, top, w, h = boxes.T
  assert (left >= 0).all() and (top >= 0).all()
  assert (left + w <= 500).all() and (top + h <= 375).all()
  area = w * h / (500 * 375)
  ratio = w / h
  # Rounding to whole pixels moves area and ratio a little past the drawn values.
  assert area.min() > 0.07 and area.max() <= 1.0
  assert ratio.min() > 0.74 and ratio.max() < 1.35
  log_ratio = np.log(ratio[area < 0.5])  # Crops that always fit: log-uniform ratio.
  assert np.mean(log_ratio) == pytest.approx(0.0, abs=0.02)
  assert np.std(log_ratio) == pytest.approx(math.log(4 / 3) / math.sqrt(3), rel=0.05)
  # On a square image with a fixed ratio every draw fits: area uniform in [0.08, 1].
  square = np.array([ha.crop_box(rng, 400, 400, ratio=(1, 1)) for _ in range(3000)])
  area = square[:, 2] * square[:, 3] / 400**2
  assert area.mean() == pytest.approx(0.54, abs=0.015) and area.min() < 0.09


def test_crop_box_falls_back_to_a_centred_crop():
  rng = np.random.default_rng(0)
  # A 1000x10 strip: no crop of area >= 8% with ratio <= 4/3 fits, so the centre crop of ratio 4/3.
  assert ha.crop_box(rng, 1000, 10) == ((1000 - 13) // 2, 0, 13, 10)
  assert ha.crop_box(rng, 10, 1000) == (0, (1000 - 13) // 2, 10, 13)
  assert ha.crop_box(rng, 64, 48, scale=(2.0, 2.0)) == (0, 0, 64, 48)  # Whole image.


def test_multi_view_shapes_and_determinism():
  image = jpeg(Image.fromarray(np.random.default_rng(1).integers(0, 256, (75, 100, 3), np.uint8)))
  views = ha.multi_view(image, np.random.default_rng(7), resolution=32, num_views=8)
  again = ha.multi_view(image, np.random.default_rng(7), resolution=32, num_views=8)
  other = ha.multi_view(image, np.random.default_rng(8), resolution=32, num_views=8)
  assert views.shape == (8, 32, 32, 3) and views.dtype == np.uint8
  assert np.array_equal(views, again) and not np.array_equal(views, other)
  assert len({v.tobytes() for v in views}) == 8  # 8 independent draws.


def test_grey_images_become_three_equal_channels():
  grey = np.random.default_rng(2).integers(0, 256, (28, 28, 1), np.uint8)
  views = ha.multi_view(grey, np.random.default_rng(0), resolution=32, num_views=4)
  assert views.shape == (4, 32, 32, 3)
  assert np.array_equal(views[..., 0], views[..., 1])
  assert np.array_equal(views[..., 0], views[..., 2])


def test_full_crops_are_the_resized_image_or_its_mirror():
  image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 40, 3), np.uint8))
  resized = np.asarray(image.resize((24, 24), Image.Resampling.BICUBIC))
  views = ha.multi_view(image, np.random.default_rng(0), resolution=24, num_views=16,
                        scale=(1.0, 1.0), ratio=(1.0, 1.0))
  flipped = [np.array_equal(v, resized[:, ::-1]) for v in views]
  same = [np.array_equal(v, resized) for v in views]
  assert all(f or s for f, s in zip(flipped, same, strict=True))
  assert 0 < sum(flipped) < 16


def test_reduced_jpeg_decode_matches_the_full_decode():
  photo = Image.open(foolbox_images("imagenet")[0]).convert("RGB").resize(
      (1600, 1200), Image.Resampling.BICUBIC)
  encoded = jpeg(photo, quality=95)
  opened = Image.open(io.BytesIO(encoded))
  boxes = [ha.crop_box(np.random.default_rng(0), 1600, 1200, scale=(0.6, 1.0))]
  ha._decode_scale(opened, boxes, 224)
  assert opened.size == (400, 300)  # Every crop keeps >= 224 pixels a side at 1/4 scale.
  fast = ha.multi_view(encoded, np.random.default_rng(5), resolution=224, num_views=4,
                       scale=(0.6, 1.0))
  full = ha.multi_view(Image.open(io.BytesIO(encoded)).convert("RGB"), np.random.default_rng(5),
                       resolution=224, num_views=4, scale=(0.6, 1.0))
  assert np.abs(fast.astype(float) - full).mean() < 2.0  # Levels of 255.


def test_real_colour_photos():
  for prefix, size in (("cifar10", 32), ("imagenet", 512)):
    for path in foolbox_images(prefix)[:4]:
      with open(path, "rb") as f:
        encoded = f.read()
      image = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
      assert image.shape[0] >= size
      views = ha.multi_view(encoded, np.random.default_rng(0), resolution=64, num_views=8,
                            scale=(1.0, 1.0), ratio=(1.0, 1.0))
      # Whole-image views keep the photo's mean colour.
      assert np.abs(views.mean((0, 1, 2)) - image.mean((0, 1))).max() < 3.0


# ---- device part: each step against PIL / colorsys ----

@pytest.fixture(scope="module")
def photo():
  """A real 48x48 photo, or smooth random colours when foolbox is absent."""
  spec = importlib.util.find_spec("foolbox")
  if spec is not None and spec.origin is not None:
    image = Image.open(foolbox_images("imagenet")[3]).convert("RGB")
  else:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (6, 6, 3), np.uint8))
  return image.resize((48, 48), Image.Resampling.BICUBIC)


def as_float(image):
  return jnp.asarray(np.asarray(image), jnp.float32) / 255.0


def levels(array):
  return np.asarray(array, np.float64) * 255.0


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
@pytest.mark.parametrize("factor", [0.6, 1.4])
def test_enhancements_match_pil(photo, name, factor):
  ours = {"brightness": da.adjust_brightness, "contrast": da.adjust_contrast,
          "saturation": da.adjust_saturation}[name](as_float(photo), jnp.float32(factor))
  pil = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
         "saturation": ImageEnhance.Color}[name](photo).enhance(factor)
  # PIL rounds to whole levels after the step (and the contrast target to a whole level before).
  assert np.abs(levels(ours) - np.asarray(pil)).max() <= 1.3


def test_hue_matches_an_hsv_round_trip(photo):
  x = np.asarray(photo, np.float64).reshape(-1, 3) / 255.0
  for shift in (-0.1, 0.03, 0.1):
    reference = []
    for r, g, b in x:
      h, s, v = colorsys.rgb_to_hsv(r, g, b)
      reference.append(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v))
    ours = np.asarray(da.adjust_hue(as_float(photo), jnp.float32(shift))).reshape(-1, 3)
    assert np.abs(ours - np.asarray(reference)).max() < 1e-5


def test_grayscale_and_solarize_match_pil(photo):
  grey = levels(da.grayscale(as_float(photo)))
  assert np.abs(grey - np.asarray(photo.convert("L"))).max() <= 0.51
  ramp = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
  ours = levels(da.solarize(as_float(Image.fromarray(ramp))))
  reference = np.asarray(ImageOps.solarize(Image.fromarray(ramp), threshold=128))
  assert np.abs(ours - reference).max() < 1e-3  # Exact on whole levels: 128 flips, 127 does not.


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0])
def test_blur_matches_pil(photo, sigma):
  ours = levels(da.gaussian_blur(as_float(photo), jnp.float32(sigma)))
  pil = np.asarray(photo.filter(ImageFilter.GaussianBlur(radius=sigma)), np.float64)
  assert np.abs(ours - pil).mean() < 2.0  # PIL approximates the Gaussian with box blurs.
  flat = jnp.full((32, 32, 3), 0.25)
  assert np.allclose(da.gaussian_blur(flat, jnp.float32(sigma)), 0.25, atol=1e-6)
  kernel = da.gaussian_kernel(jnp.float32(sigma), da.blur_radius(224))
  assert kernel.shape == (13,) and float(kernel.sum()) == pytest.approx(1.0, abs=1e-6)


def test_color_jitter_applies_the_drawn_order(photo):
  image = as_float(photo)
  ops = (da.adjust_brightness, da.adjust_contrast, da.adjust_saturation, da.adjust_hue)
  for seed in range(6):
    key = jax.random.key(seed)
    order, factors, shift = da.jitter_params(key)
    expected = image
    for op in np.asarray(order):
      expected = ops[op](expected, shift if op == 3 else factors[op])
    assert np.abs(np.asarray(da.color_jitter(key, image)) - np.asarray(expected)).max() < 1e-5


def test_jitter_parameters_have_torchvision_ranges():
  orders, factors, shifts = jax.vmap(da.jitter_params)(jax.random.split(jax.random.key(0), 4000))
  factors, shifts = np.asarray(factors), np.asarray(shifts)
  for column, spread in enumerate((0.4, 0.4, 0.2)):
    low, high = factors[:, column].min(), factors[:, column].max()
    assert 1 - spread <= low < 1 - 0.95 * spread and 1 + 0.95 * spread < high <= 1 + spread
  assert shifts.min() >= -0.1 and shifts.max() <= 0.1 and abs(shifts.mean()) < 0.005
  seen = {tuple(o) for o in np.asarray(orders).tolist()}
  assert seen == set(itertools.permutations(range(4)))  # All 24 orders.


# ---- device part: decisions per pipeline ----

def test_decisions_per_pipeline():
  params = da.augmentation_params(jax.random.key(0), 4000, 8)
  first, second = slice(0, 4), slice(4, 8)
  rate = lambda name, views: float(np.asarray(params[name])[:, views].mean())
  for views in (first, second):
    assert rate("jitter", views) == pytest.approx(0.8, abs=0.015)
    assert rate("grayscale", views) == pytest.approx(0.2, abs=0.015)
  assert rate("blur", first) == pytest.approx(0.1, abs=0.01)
  assert rate("blur", second) == 1.0  # Always blurred in pipeline 2.
  assert rate("solarize", first) == 0.0  # Never solarised in pipeline 1.
  assert rate("solarize", second) == pytest.approx(0.2, abs=0.015)
  sigma = np.asarray(params["sigma"])
  assert sigma.min() >= 0.1 and sigma.max() <= 2.0 and sigma.mean() == pytest.approx(1.05, abs=0.02)


augment = jax.jit(da.device_augment, static_argnames=("dtype",))


def test_solarize_only_in_pipeline_two_end_to_end():
  # White views stay >= 0.6 through jitter, grayscale and blur; solarize turns them <= 0.4.
  views = jnp.full((500, 8, 4, 4, 3), 255, jnp.uint8)
  out = np.asarray(augment(jax.random.key(1), views))
  raw = out * np.asarray(normalize.IMAGENET_STD) + np.asarray(normalize.IMAGENET_MEAN)
  solarized = raw.mean((2, 3, 4)) < 0.5
  assert not solarized[:, :4].any()
  assert solarized[:, 4:].mean() == pytest.approx(0.2, abs=0.03)


def test_device_augment_shapes_determinism_and_dtype():
  views = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 8, 16, 16, 3), np.uint8))
  key = jax.random.key(0)
  a = augment(key, views)
  assert a.shape == (2, 8, 16, 16, 3) and a.dtype == jnp.float32
  assert np.array_equal(a, augment(jax.random.key(0), views))
  assert not np.array_equal(a, augment(jax.random.key(1), views))
  assert len({np.asarray(v).tobytes() for v in a.reshape(16, -1)}) == 16  # A key per view.
  half = jax.eval_shape(lambda k, v: da.device_augment(k, v, dtype=jnp.bfloat16), key, views)
  assert half.dtype == jnp.bfloat16 and half.shape == a.shape  # (Traced only: no compile.)
  # Untouched mid-grey maps to (0.5 - mean) / std.
  plain = normalize.normalize(jnp.full((1, 1, 3), 0.5))
  expected = (0.5 - np.asarray(normalize.IMAGENET_MEAN)) / np.asarray(normalize.IMAGENET_STD)
  assert np.allclose(plain[0, 0], expected, atol=1e-6)


def test_device_augment_rating_views_and_odd_counts():
  # Rating pairs (2 views: one of each pipeline) of an odd batch: each view is the augmentation of
  # its own drawn parameters, view 0 with pipeline 1's probabilities and view 1 with pipeline 2's.
  rng = np.random.default_rng(0)
  views = jnp.asarray(rng.integers(0, 256, (3, 2, 16, 16, 3), dtype=np.uint8))
  key = jax.random.key(0)
  out = np.asarray(augment(key, views))
  assert out.shape == (3, 2, 16, 16, 3) and np.all(np.isfinite(out))
  params = da.augmentation_params(key, 3, 2)
  for b in range(3):
    for v in range(2):
      p = jax.tree.map(lambda x, b=b, v=v: x[b, v], params)
      want = normalize.normalize(da.apply_augmentation(views[b, v].astype(jnp.float32) / 255, p))
      np.testing.assert_allclose(out[b, v], want, atol=1e-5)
  np.testing.assert_allclose(da.pipeline_probs(2, (0.1, 1.0)), [0.1, 1.0], rtol=1e-6)
  with pytest.raises(ValueError, match="halves"):
    da.device_augment(jax.random.key(0), jnp.zeros((1, 3, 8, 8, 3), jnp.uint8))


def test_device_augment_inside_shard_map():
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  batch = 2 * jax.device_count()
  views = jnp.asarray(np.full((batch, 2, 8, 8, 3), 128, np.uint8))

  def step(key, local):
    key = jax.random.fold_in(key, jax.lax.axis_index("data"))
    return da.device_augment(key, local)

  out = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")),
                              out_specs=P("data")))(jax.random.key(0), views)
  assert out.shape == (batch, 2, 8, 8, 3)
  per_device = np.asarray(out).reshape(jax.device_count(), -1)
  assert len({row.tobytes() for row in per_device}) == jax.device_count()


def test_blur_kernel_fits_small_resolutions():
  assert da.blur_radius(224) == 6 and da.blur_radius(32) == 6 and da.blur_radius(5) == 4
  assert math.isclose(float(da.gaussian_kernel(jnp.float32(0.1), 6)[6]), 1.0, rel_tol=1e-6)
