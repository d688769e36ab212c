"""Retraining data (docs/method.md#retraining-recipe): RandAugment ops and draws, the labelled
train/eval iterators (repeated augmentation, resume, hosts, padding), and the device-side
regularisers against their definitions (label smoothing, mixup/cutmix, random erasing)."""

import functools
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import PartitionSpec as P
from PIL import Image, ImageFilter
from test_data_embedded import IDX_DIR, small_idx_folder

from bossnas_jax.data import classification, embedded, host_augment, mixing, normalize
from bossnas_jax.data import randaugment as ra

needs_idx = pytest.mark.skipif(
    not os.path.isdir(IDX_DIR),
    reason=f"{IDX_DIR} is missing: `apt-get install dataset-fashion-mnist`.")

RECIPE = "rand-m9-mstd0.5-inc1"


def data_config(data_dir=None, **overrides):
  values = dict(
      name="embedded_fashion_mnist", data_dir=data_dir, train_split="train", eval_split="test",
      worker_count=0, crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), randaugment=RECIPE,
      color_jitter=0.4, repeats=3)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def augment_config(**overrides):
  values = dict(erase_prob=0.25, erase_mode="pixel", erase_count=1, mixup=0.8, cutmix=1.0,
                switch_prob=0.5, mix_prob=1.0, label_smoothing=0.1)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A small embedded set: 100 training and 20 test images."""
  if not os.path.isdir(IDX_DIR):
    pytest.skip(f"{IDX_DIR} is missing")
  root = tmp_path_factory.mktemp("retrain")
  folder = small_idx_folder(str(root / "idx"), train=100, test=20)
  return embedded.prepare_embedded(str(root / "cache"), idx_dir=folder)


def rgb_image(seed=0, size=(20, 16)):
  """A random RGB PIL image (width, height) = size."""
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


# --- RandAugment: parsing, draws, ops. -------------------------------------------------------

def test_parse_the_recipe_spec():
  augment = ra.RandAugment.parse(RECIPE)
  assert augment.ops == ra.INCREASING_OPS and len(augment.ops) == 15
  assert (augment.num_ops, augment.magnitude, augment.magnitude_std) == (2, 9.0, 0.5)
  assert augment.prob == 0.5 and augment.fill == (124, 116, 104)
  assert augment.resample == Image.Resampling.BICUBIC
  plain = ra.RandAugment.parse("rand-m7-n3")
  assert plain.ops == ra.STANDARD_OPS and (plain.num_ops, plain.magnitude) == (3, 7.0)
  assert ra.RandAugment.parse("rand-m9-inc0").ops == ra.STANDARD_OPS
  assert ra.from_config(None) is None and ra.from_config("") is None
  # The fill is round(255 * ImageNet mean).
  assert ra.MEAN_FILL == tuple(round(255 * m) for m in normalize.IMAGENET_MEAN)


@pytest.mark.parametrize("spec", ["rand-m9-x3", "augmix-m5", "rand-w0-m9", "rand-m11",
                                  "rand-mstd-1", 7])
def test_bad_randaugment_specs_fail_clearly(spec):
  with pytest.raises(ValueError, match="RandAugment"):
    ra.from_config(spec)


def test_draws_two_ops_with_magnitudes_around_nine():
  augment = ra.RandAugment.parse(RECIPE)
  draws = [augment.draw(np.random.default_rng([7, i])) for i in range(3000)]
  assert all(len(d) == 2 for d in draws)
  ops = [op for d in draws for op in d]
  magnitudes = np.array([op.magnitude for op in ops])
  assert magnitudes.min() >= 0.0 and magnitudes.max() <= 10.0
  # N(9, 0.5) clipped at 10: P(> 10) = P(z > 2) = 2.28%, the rest unchanged.
  clipped = np.mean(magnitudes == 10.0)
  assert abs(clipped - 0.0228) < 0.008
  inside = magnitudes[magnitudes < 10.0]
  assert abs(np.median(magnitudes) - 9.0) < 0.04 and abs(np.percentile(inside, 50) - 8.98) < 0.05
  assert abs(np.percentile(magnitudes, 84.13) - 9.5) < 0.06  # One std above the mean.
  assert abs(np.mean([op.applied for op in ops]) - 0.5) < 0.03
  assert abs(np.mean([op.negate for op in ops]) - 0.5) < 0.03
  counts = np.array([sum(op.name == name for op in ops) for name in ra.INCREASING_OPS])
  assert counts.min() > 0.7 * len(ops) / 15 and counts.max() < 1.3 * len(ops) / 15
  # Draws are a function of the generator: the same seed gives the same ops.
  assert augment.draw(np.random.default_rng([7, 5])) == draws[5]


def test_only_the_drawn_applied_ops_are_applied():
  image = rgb_image(1)
  pixels = np.asarray(image)
  invert = ra.RandAugment(ops=("Invert",), num_ops=1, prob=1.0)
  assert np.array_equal(np.asarray(invert(image, np.random.default_rng(0))), 255 - pixels)
  twice = ra.RandAugment(ops=("Invert",), num_ops=2, prob=1.0)
  assert np.array_equal(np.asarray(twice(image, np.random.default_rng(0))), pixels)
  never = ra.RandAugment(ops=("Invert",), num_ops=2, prob=0.0)
  assert np.array_equal(np.asarray(never(image, np.random.default_rng(0))), pixels)
  # With p = 0.5 the result is inverted exactly when an odd number of the two draws apply.
  half = ra.RandAugment(ops=("Invert",), num_ops=2, prob=0.5)
  for seed in range(20):
    draws = half.draw(np.random.default_rng(seed))
    out = np.asarray(half(image, np.random.default_rng(seed)))
    inverted = sum(op.applied for op in draws) % 2 == 1
    assert np.array_equal(out, 255 - pixels if inverted else pixels)


def test_level_to_argument_at_magnitude_nine():
  expected = {
      "Rotate": (27.0, -27.0), "ShearX": (0.27, -0.27), "ShearY": (0.27, -0.27),
      "TranslateXRel": (0.405, -0.405), "TranslateYRel": (0.405, -0.405),
      "Posterize": (3, 3), "PosterizeIncreasing": (1, 1), "Solarize": (230, 230),
      "SolarizeIncreasing": (26, 26), "SolarizeAdd": (99, 99),
      "Color": (1.72, 1.72), "Contrast": (1.72, 1.72), "Brightness": (1.72, 1.72),
      "Sharpness": (1.72, 1.72), "ColorIncreasing": (1.81, 0.19),
      "ContrastIncreasing": (1.81, 0.19), "BrightnessIncreasing": (1.81, 0.19),
      "SharpnessIncreasing": (1.81, 0.19), "AutoContrast": (None, None),
      "Equalize": (None, None), "Invert": (None, None)}
  for name, (positive, negative) in expected.items():
    for negate, value in ((False, positive), (True, negative)):
      got = ra.op_argument(name, 9.0, negate)
      assert got == value or got == pytest.approx(value, abs=1e-12), (name, negate)
  # The extremes: magnitude 10 keeps no bit and solarises everything above 0.
  assert ra.op_argument("PosterizeIncreasing", 10.0) == 0
  assert ra.op_argument("SolarizeIncreasing", 10.0) == 0
  assert ra.op_argument("ColorIncreasing", 0.0) == 1.0


def _equalize_reference(channel):
  histogram = np.bincount(channel.ravel(), minlength=256)
  last = histogram[np.nonzero(histogram)[0][-1]]
  step = (histogram.sum() - last) // 255
  if step == 0:
    return channel
  lut, n = np.empty(256, np.int64), step // 2
  for i in range(256):
    lut[i] = min(255, n // step)
    n += histogram[i]
  return lut[channel].astype(np.uint8)


def _luma(x):
  return (x[..., 0] * 299 + x[..., 1] * 587 + x[..., 2] * 114 + 500) // 1000


def test_pixel_ops_against_their_definitions():
  image = rgb_image(2)
  x = np.asarray(image).astype(np.int64)

  def run(name, argument):
    return np.asarray(ra.apply_op(image, name, argument)).astype(np.int64)

  assert np.array_equal(run("Invert", None), 255 - x)
  assert np.array_equal(run("Solarize", 100), np.where(x >= 100, 255 - x, x))
  assert np.array_equal(run("SolarizeAdd", 99), np.where(x < 128, np.minimum(x + 99, 255), x))
  for bits in (0, 1, 3):
    assert np.array_equal(run("Posterize", bits), x & (0xFF << (8 - bits)) & 0xFF)
  assert np.array_equal(run("Posterize", 8), x)
  low, high = x.min(axis=(0, 1)), x.max(axis=(0, 1))
  stretched = (x - low) * 255.0 / (high - low)
  assert np.abs(run("AutoContrast", None) - stretched).max() <= 1.0
  equalized = np.stack([_equalize_reference(x[..., c].astype(np.uint8)) for c in range(3)], -1)
  assert np.array_equal(run("Equalize", None), equalized)
  # The enhancements blend with a degenerate image: out = degenerate + f (x - degenerate).
  black, grey = np.zeros_like(x), _luma(x)[..., None]
  mean_grey = np.floor(_luma(x).mean() + 0.5)
  for f in (0.19, 1.81):
    for name, degenerate in (("Brightness", black), ("Color", grey), ("Contrast", mean_grey)):
      want = np.clip(degenerate + f * (x - degenerate), 0, 255)
      assert np.abs(run(name, f) - want).max() <= 1.0 + abs(1 - f), (name, f)
    smooth = np.asarray(image.filter(ImageFilter.SMOOTH)).astype(np.int64)
    want = np.clip(smooth + f * (x - smooth), 0, 255)
    assert np.abs(run("Sharpness", f) - want).max() <= 1.0
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13.0
    interior = sum(kernel[i, j] * x[i:i + 14, j:j + 18] for i in range(3) for j in range(3))
    assert np.abs(smooth[1:-1, 1:-1] - interior).max() <= 1.0  # SMOOTH is that 3x3 kernel.


def test_geometric_ops_against_their_definitions():
  image = rgb_image(3)
  x = np.asarray(image)
  fill = np.array(ra.MEAN_FILL)
  # Translation by a whole number of pixels: a shift, uncovered pixels take the fill colour.
  moved = np.asarray(ra.apply_op(image, "TranslateXRel", 0.25))  # 5 of 20 columns.
  assert np.array_equal(moved[:, :15], x[:, 5:]) and np.all(moved[:, 15:] == fill)
  moved = np.asarray(ra.apply_op(image, "TranslateYRel", -0.25))  # 4 of 16 rows, downwards.
  assert np.array_equal(moved[4:], x[:12]) and np.all(moved[:4] == fill)
  # Shear and rotation: PIL's affine map output (u, v) -> input (u + f v, v) (resp. (u, f u + v))
  # and rotation about the centre, bicubic, mean fill.
  for name, coefficients in (("ShearX", (1, 0.27, 0, 0, 1, 0)),
                             ("ShearY", (1, 0, 0, -0.27, 1, 0))):
    f = coefficients[1] or coefficients[3]
    want = image.transform(image.size, Image.Transform.AFFINE, coefficients,
                           resample=Image.Resampling.BICUBIC, fillcolor=ra.MEAN_FILL)
    assert np.array_equal(np.asarray(ra.apply_op(image, name, f)), np.asarray(want))
  want = image.rotate(27.0, resample=Image.Resampling.BICUBIC, fillcolor=ra.MEAN_FILL)
  assert np.array_equal(np.asarray(ra.apply_op(image, "Rotate", 27.0)), np.asarray(want))
  flat = Image.new("RGB", (21, 21), (200, 10, 60))
  turned = np.asarray(ra.apply_op(flat, "Rotate", 30.0))
  assert tuple(turned[10, 10]) == (200, 10, 60) and tuple(turned[0, 0]) == ra.MEAN_FILL
  sheared = np.asarray(ra.apply_op(flat, "ShearX", 0.3))
  assert tuple(sheared[20, 20]) == ra.MEAN_FILL and tuple(sheared[0, 10]) == (200, 10, 60)


# --- Host pipeline. ----------------------------------------------------------------------------

def make(data, **kwargs):
  arguments = dict(resolution=24, seed=0, global_batch_size=16, num_epochs=2, device_count=8)
  arguments.update(kwargs)
  return classification.train_iterator(data, **arguments)


def equal_batches(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


@needs_idx
def test_sizes_and_batches(data_dir):
  data = data_config(data_dir)
  assert classification.num_classes(data) == 10
  assert classification.num_examples(data, "train") == 100
  assert classification.num_examples(data, "test") == 20
  iterator = make(data)
  batch = next(iterator)
  assert batch["image"].shape == (16, 24, 24, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
  rest = list(iterator)  # 100 // 16 = 6 batches per epoch, 2 epochs.
  assert len(rest) == 11


@needs_idx
def test_transform_is_crop_flip_then_the_observable_randaugment_draws(data_dir):
  data = data_config(data_dir)
  source = classification.open_split(data, "train")
  transform = classification.TrainTransform.from_config(data, 24)
  assert transform.color_jitter is None  # timm: no colour jitter when RandAugment is on.
  image, _ = source[3]
  words = (5, classification.RETRAIN, 1, 17)
  rng = np.random.default_rng(words)
  pil = host_augment.open_image(image)
  left, top, w, h = host_augment.crop_box(rng, *pil.size)
  view = pil.resize((24, 24), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
  if rng.random() < 0.5:
    view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  draws = transform.randaugment.draw(rng)
  want = transform.randaugment.apply(view.convert("RGB"), draws)
  assert np.array_equal(transform(image, words), np.asarray(want))
  # Without RandAugment and jitter a grey image gives 3 equal channels.
  plain = classification.TrainTransform.from_config(
      data_config(data_dir, randaugment=None, color_jitter=None), 24)
  out = plain(image, words)
  assert out.shape == (24, 24, 3) and np.array_equal(out[..., 0], out[..., 2])
  jitter = classification.TrainTransform.from_config(data_config(data_dir, randaugment=""), 24)
  assert jitter.randaugment is None and jitter.color_jitter == (0.4, 0.4, 0.4, 0.0)


@needs_idx
def test_same_seed_same_batches_other_seed_other_batches(data_dir):
  data = data_config(data_dir)
  first = [next(make(data, num_epochs=1)) for _ in range(2)]
  assert equal_batches(first[:1], first[1:])
  other = next(make(data, seed=1, num_epochs=1))
  assert not np.array_equal(first[0]["image"], other["image"])


@needs_idx
def test_resume_mid_epoch_and_first_epoch(data_dir):
  data = data_config(data_dir)
  reference = list(make(data))
  iterator = make(data)
  for _ in range(4):
    next(iterator)
  state = iterator.get_state()
  resumed = make(data)
  resumed.set_state(state)
  assert equal_batches(list(resumed), reference[4:])
  # Epoch 1 is the same whether the run started at epoch 0 or resumes at epoch 1.
  assert equal_batches(list(make(data, num_epochs=1, first_epoch=1)), reference[6:])


@needs_idx
def test_two_hosts_together_give_the_global_batch(data_dir):
  data = data_config(data_dir)
  whole = list(make(data, num_epochs=1))
  hosts = [list(make(data, num_epochs=1, process_index=h, process_count=2)) for h in (0, 1)]
  for k, batch in enumerate(whole):
    for key in batch:
      assert np.array_equal(np.concatenate([hosts[0][k][key], hosts[1][k][key]]), batch[key])
  with pytest.raises(ValueError, match="process_index"):
    make(data, process_index=2, process_count=2)


def test_repeated_augmentation_positions():
  for batch, repeats in ((16, 3), (15, 3), (16, 1), (12, 4)):
    positions = classification.epoch_positions(100, 3, 2, batch, repeats)
    steps = 100 // batch
    distinct = math.ceil(batch / repeats)
    assert positions.shape == (steps, batch)  # The epoch keeps its length.
    values, counts = np.unique(positions, return_counts=True)
    assert len(values) == steps * distinct
    # Every image R times (R - 1 for the last u R - G slots of a batch), all within one batch.
    assert set(counts) <= {repeats, repeats - 1}
    assert np.sum(counts == repeats - 1) == steps * (distinct * repeats - batch)
    for row in positions:
      assert len(np.unique(row)) == distinct
      assert np.array_equal(row[distinct:], row[:batch - distinct])  # Copies u apart.
  order = np.random.default_rng(classification.epoch_seed(3, 2)).permutation(100)
  assert np.array_equal(classification.epoch_positions(100, 3, 2, 16, 1).ravel(), order[:96])
  # With at least R devices the copies of an image are on different devices.
  row = classification.epoch_positions(100, 3, 0, 16, 3)[0]
  per_device = row.reshape(8, 2)
  devices = {int(i): {d for d in range(8) if i in per_device[d]} for i in np.unique(row)}
  assert all(len(ds) == list(row).count(i) for i, ds in devices.items())


@needs_idx
def test_repeated_copies_are_augmented_independently(data_dir):
  data = data_config(data_dir)
  batch = next(make(data, num_epochs=1))
  row = classification.epoch_positions(100, 0, 0, 16, 3)[0]
  source = classification.open_split(data, "train")
  assert batch["label"].tolist() == [source[i][1] for i in row]
  u = 6
  for q in range(4):  # Copies q, q + 6, q + 12 of one image: same label, other pixels.
    copies = [batch["image"][q + k * u] for k in range(3)]
    assert len({batch["label"][q + k * u] for k in range(3)}) == 1
    assert not np.array_equal(copies[0], copies[1]) and not np.array_equal(copies[1], copies[2])
  single = next(make(data_config(data_dir, repeats=1), num_epochs=1))
  assert len(set(single["label"].tolist())) >= 5  # 16 distinct images of 10 classes.


@needs_idx
def test_eval_batches_are_padded_and_masked(data_dir):
  data = data_config(data_dir)
  source = classification.open_split(data, "test")
  batches = list(classification.eval_iterator(data, split="test", resolution=24,
                                              global_batch_size=8, device_count=8))
  assert classification.eval_steps(20, 8) == len(batches) == 3
  assert [int(b["valid"].sum()) for b in batches] == [8, 8, 4]
  images = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  for i in (0, 13, 19):
    assert np.array_equal(images[i], host_augment.eval_image(source[i][0], 24))
    assert labels[i] == source[i][1]
  assert not images[20:].any() and not labels[20:].any()
  hosts = [list(classification.eval_iterator(data, split="test", resolution=24,
                                             global_batch_size=8, device_count=8,
                                             process_index=h, process_count=2)) for h in (0, 1)]
  assert len(hosts[0]) == len(hosts[1]) == 3
  assert [int(b["valid"].sum()) for b in hosts[1]] == [4, 4, 0]
  for k in range(3):
    assert np.array_equal(np.concatenate([hosts[0][k]["image"], hosts[1][k]["image"]]),
                          batches[k]["image"])


@needs_idx
@pytest.mark.parametrize("key,value,match", [
    ("repeats", 0, "repeats"), ("repeats", 1.5, "repeats"), ("randaugment", "rand-q2", "section"),
    ("crop_scale", (0.5, 0.1), "crop_scale"), ("crop_scale", (0.1, 1.5), "crop_scale"),
    ("crop_ratio", (1.0,), "crop_ratio"), ("color_jitter", (0.4, 0.4), "color_jitter"),
    ("color_jitter", -0.1, "color_jitter")])
def test_bad_data_config_fails_clearly(data_dir, key, value, match):
  data = data_config(data_dir, **{"randaugment": None, key: value})
  with pytest.raises(ValueError, match=match):
    make(data)


@needs_idx
def test_batch_must_divide_the_devices(data_dir):
  with pytest.raises(ValueError, match="multiple of the number of devices"):
    make(data_config(data_dir), global_batch_size=12)


def test_imagenet2012_with_mock_data(tmp_path):
  data = data_config(str(tmp_path), name="imagenet2012", train_split="train",
                     eval_split="validation")
  with tfds.testing.mock_data(num_examples=8):
    assert classification.num_classes(data) == 1000
    batch = next(make(data, global_batch_size=8, resolution=32))
    assert batch["image"].shape == (8, 32, 32, 3) and batch["label"].max() < 1000
    ev = list(classification.eval_iterator(data, split="validation", resolution=32,
                                           global_batch_size=8, device_count=8))
    assert len(ev) == 1 and ev[0]["valid"].all()


@needs_idx
def test_worker_processes_give_the_same_batches(data_dir):
  data = data_config(data_dir)
  reference = list(make(data, num_epochs=1))[:3]
  iterator = make(data, num_epochs=1, worker_count=1)
  try:
    for expected in reference:
      batch = next(iterator)
      assert all(np.array_equal(batch[k], expected[k]) for k in expected)
  finally:
    iterator.close()


# --- Device side. -----------------------------------------------------------------------------
# Programs are jitted once per setting and shared between tests (eager calls would compile every
# primitive on its own; Beta sampling alone costs seconds of compile on 2 cores). Statistical tests
# with many draws use 'rbg' keys, which compile much faster at large shapes; the functions only use
# the jax.random API, so their semantics do not depend on the key type.

_mix = jax.jit(functools.partial(mixing.mixup_cutmix, num_classes=10))
_params = jax.jit(mixing.mix_params, static_argnames=("shape",))
_erase = jax.jit(mixing.random_erasing, static_argnames=("prob", "mode", "count"))
_boxes = jax.jit(mixing.erase_boxes, static_argnames=("shape", "prob", "count"))


def test_smooth_labels_values():
  targets = np.asarray(mixing.smooth_labels(jnp.array([0, 3, 9]), 10, 0.1))
  assert targets.shape == (3, 10) and targets.dtype == np.float32
  np.testing.assert_allclose(targets[1, 3], 0.91, rtol=1e-6)  # 1 - 0.1 + 0.1 / 10.
  np.testing.assert_allclose(np.delete(targets[1], 3), 0.01, rtol=1e-6)
  np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
  assert np.array_equal(np.asarray(mixing.smooth_labels(jnp.array([2]), 4, 0.0)),
                        [[0, 0, 1, 0]])
  with pytest.raises(ValueError, match="smoothing"):
    mixing.smooth_labels(jnp.array([0]), 10, 1.0)


def _smoothed(labels):
  return np.asarray(mixing.smooth_labels(jnp.asarray(labels), 10, 0.1))


def test_mixup_and_cutmix_against_their_definitions():
  # Image i is the constant i + 1: every pixel says which example it comes from.
  x = np.broadcast_to(np.arange(1, 5, dtype=np.float32)[:, None, None, None], (4, 16, 16, 3))
  labels = np.array([0, 3, 3, 7], np.int32)
  y = _smoothed(labels)
  kinds = set()
  for seed in range(12):
    key = jax.random.key(seed)
    mixed, targets = (np.asarray(a) for a in _mix(key, x, labels))
    lam, use_cutmix, (yl, yh, xl, xh), drawn = (jax.tree.map(np.asarray, p)
                                                for p in _params(key, x.shape))
    lam = float(lam)
    # Targets: lam y + (1 - lam) y_flip, with the same lam as the images.
    np.testing.assert_allclose(targets, lam * y + (1 - lam) * y[::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
    if use_cutmix:
      kinds.add("cutmix")
      from_partner = mixed[..., 0] == x[::-1, :, :, 0]
      box = from_partner[0]
      assert np.all(from_partner == box)  # One box for the whole batch.
      assert np.all((mixed[0] == x[0]) | (mixed[0] == x[-1]))
      rows, cols = np.nonzero(box)
      if box.any():  # A rectangle: rows [yl, yh), columns [xl, xh).
        assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (yl, yh, xl, xh)
      # Corrected lam = 1 - box area / image area; the side comes from the drawn lam:
      # cut = int(16 sqrt(1 - drawn)), half-sizes cut // 2 around a centre, clipped.
      assert lam == pytest.approx(1.0 - box.sum() / 256.0, abs=1e-6)
      cut = int(16 * math.sqrt(1 - float(drawn)))
      assert yh - yl <= 2 * (cut // 2) and xh - xl <= 2 * (cut // 2)
      assert (yh - yl == 2 * (cut // 2)) or yl == 0 or yh == 16
    else:
      kinds.add("mixup")
      assert lam == float(drawn) and 0 < lam < 1
      np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[::-1], rtol=1e-6)
  assert kinds == {"mixup", "cutmix"}


def test_mixing_probabilities_and_lambda_distribution():
  keys = jax.random.split(jax.random.key(0, impl="rbg"), 6000)
  x = np.broadcast_to(np.arange(1, 3, dtype=np.float32)[:, None, None, None], (2, 4, 4, 1))
  labels = np.array([1, 2], np.int32)

  def one(key):
    images, targets = mixing.mixup_cutmix(key, x, labels, num_classes=10, prob=0.5)
    return images, targets, mixing.mix_params(key, x.shape, prob=0.5)

  images, targets, (lam, use_cutmix, _, drawn) = jax.tree.map(
      np.asarray, jax.jit(jax.vmap(one))(keys))
  mixed = drawn < 1.0  # (An applied cutmix may still have an empty box on 4 x 4 images.)
  assert abs(mixed.mean() - 0.5) < 0.03  # mix_prob 0.5.
  assert np.all(lam[~mixed] == 1.0)
  assert abs(use_cutmix[mixed].mean() - 0.5) < 0.04 and not use_cutmix[~mixed].any()
  # Unmixed batches keep their images and smoothed targets.
  assert np.array_equal(images[~mixed], np.broadcast_to(x, images[~mixed].shape))
  np.testing.assert_allclose(targets[~mixed], np.broadcast_to(_smoothed(labels),
                                                             targets[~mixed].shape), rtol=1e-6)
  mixup = drawn[mixed & ~use_cutmix]  # Beta(0.8, 0.8): mean 1/2, variance 1 / (4 (2 a + 1)).
  assert abs(mixup.mean() - 0.5) < 0.035 and abs(mixup.var() - 1 / 10.4) < 0.012
  cut = drawn[use_cutmix]  # Beta(1, 1) = U(0, 1): variance 1/12.
  assert abs(cut.mean() - 0.5) < 0.035 and abs(cut.var() - 1 / 12) < 0.012


def test_random_erasing_boxes_follow_their_definition():
  shape, hw = (6000, 20, 24, 3), 20 * 24
  active, top, left, h, w = (np.asarray(a)[:, 0] for a in
                             _boxes(jax.random.key(0, impl="rbg"), shape, prob=0.25))
  assert abs(active.mean() - 0.25) < 0.02  # Per-example decision with p = 0.25.
  h, w, top, left = h[active], w[active], top[active], left[active]
  assert np.all((h >= 1) & (h < 20) & (w >= 1) & (w < 24))
  assert np.all((top >= 0) & (top + h <= 20) & (left >= 0) & (left + w <= 24))
  # h = round(sqrt(a r)), w = round(sqrt(a / r)): a and r are recoverable up to the rounding.
  assert np.all((h - 0.5) * (w - 0.5) <= hw / 3 + 1e-9)
  assert np.all((h + 0.5) * (w + 0.5) >= 0.02 * hw - 1e-9)
  assert np.all((h + 0.5) / (w - 0.5) >= 0.3) and np.all((h - 0.5) / (w + 0.5) <= 1 / 0.3)
  assert abs(np.mean(h * w) / hw - (0.02 + 1 / 3) / 2) < 0.02  # Area fraction ~ U(0.02, 1/3).
  assert top.max() > 10 and left.max() > 12 and top.min() == 0  # Positions over the image.
  counts = np.asarray(_boxes(jax.random.key(1, impl="rbg"), (3000, 16, 16, 3), prob=1.0,
                             count=3)[0]).sum(1)
  assert set(counts.tolist()) == {1, 2, 3}  # 1..count boxes, uniform.
  assert all(abs(np.mean(counts == c) - 1 / 3) < 0.04 for c in (1, 2, 3))


def test_random_erasing_fills_exactly_the_boxes():
  images = jnp.full((4, 16, 16, 3), 7.0)
  noise, erased_any = [], 0
  for seed in range(16):
    key = jax.random.key(seed)
    out = np.asarray(_erase(key, images, prob=0.25))
    active, top, left, h, w = (np.asarray(a)[:, 0] for a in
                               _boxes(jax.random.split(key)[0], images.shape, prob=0.25))
    changed = np.any(out != 7.0, axis=-1)
    for i in range(4):
      want = np.zeros((16, 16), bool)
      if active[i]:
        want[top[i]:top[i] + h[i], left[i]:left[i] + w[i]] = True
      assert np.array_equal(changed[i], want)
      noise.append(out[i][want].ravel())
      erased_any += int(active[i])
  assert erased_any > 4
  noise = np.concatenate(noise)
  assert abs(noise.mean()) < 0.1 and abs(noise.std() - 1.0) < 0.1  # Per-pixel N(0, 1).
  key = jax.random.key(0)
  zeros = np.asarray(_erase(key, images, prob=1.0, mode="const"))
  assert np.all((zeros == 0) | (zeros == 7)) and np.all(np.any(zeros == 0, axis=(1, 2, 3)))
  colour = np.asarray(_erase(key, images, prob=1.0, mode="rand"))
  for image in colour:
    erased = image[np.any(image != 7, axis=-1)]
    assert len(erased) and len(np.unique(erased, axis=0)) == 1  # One colour per box.
  assert mixing.random_erasing(key, images, prob=0.0) is images


def test_train_inputs_inside_shard_map_per_device():
  """The full recipe in shard_map: each device normalises, erases (first subkey of its key) and
  mixes its own local batch with its reversed order (second subkey)."""
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:4])
  images = np.random.default_rng(1).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
  labels = np.arange(16, dtype=np.int32) % 10
  cfg = augment_config()

  def local(key, x, y):
    key = jax.random.fold_in(key, jax.lax.axis_index("data"))
    return mixing.train_inputs(key, x, y, cfg, 10)

  run = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                              out_specs=(P("data"), P("data"))))
  key = jax.random.key(0)
  x, t = (np.asarray(a) for a in run(key, images, labels))
  assert x.dtype == t.dtype == np.float32 and x.shape == (16, 16, 16, 3) and t.shape == (16, 10)
  normalised = normalize.normalize_images(images)
  for d in range(4):
    lo = slice(4 * d, 4 * d + 4)
    k_erase, k_mix = jax.random.split(jax.random.fold_in(key, d))
    erased = _erase(k_erase, normalised[lo], prob=0.25)
    want_x, want_t = _mix(k_mix, erased, labels[lo])
    np.testing.assert_allclose(x[lo], want_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t[lo], want_t, rtol=1e-5, atol=1e-6)


def test_train_inputs_without_erasing_or_mixing_is_normalise_and_smooth():
  images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
  labels = np.array([1, 2, 3, 4], np.int32)
  plain = augment_config(erase_prob=0.0, mixup=0.0, cutmix=0.0)
  x, t = mixing.train_inputs(jax.random.key(0), images, labels, plain, 10)
  np.testing.assert_allclose(x, normalize.normalize_images(images), rtol=1e-6)
  np.testing.assert_allclose(t, _smoothed(labels), rtol=1e-6)


@pytest.mark.parametrize("key,value,match", [
    ("erase_mode", "noise", "mode"), ("erase_prob", 1.5, "probability"),
    ("erase_count", 0, "count"), ("mixup", -0.1, "alphas"), ("switch_prob", 2.0, "switch_prob"),
    ("mix_prob", -1.0, "mix_prob"), ("label_smoothing", 1.0, "smoothing")])
def test_bad_augment_config_fails_clearly(key, value, match):
  cfg = augment_config(**{key: value})
  with pytest.raises(ValueError, match=match):
    mixing.check_config(cfg)
  missing = augment_config()
  del missing["mix_prob"]
  with pytest.raises(ValueError, match="lacks"):
    mixing.train_inputs(jax.random.key(0), np.zeros((2, 4, 4, 3), np.uint8), jnp.zeros(2, int),
                        missing, 10)
