"""launch/evaluate.py's library side: official eval preprocessing and top-k on a TFDS split."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from train_utils import prepare_data

from bossnas_jax.data import embedded, host_augment
from bossnas_jax.models import bossnet
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.models import checkpoint as model_checkpoint
from bossnas_jax.retrain import evaluate


def test_eval_image_resizes_the_short_side_and_centre_crops():
  img = np.zeros((375, 500, 3), np.uint8)
  img[:, 250:] = 255  # Right half white: the centre crop straddles the edge.
  out = host_augment.eval_image(img, 224)
  assert out.shape == (224, 224, 3)
  # Short side to floor(224 * 256 / 224) = 256: 341 x 256, then the centre 224 columns.
  ref = Image.fromarray(img).resize((341, 256), Image.BICUBIC)
  left, top = (341 - 224) // 2, (256 - 224) // 2
  np.testing.assert_array_equal(out, np.asarray(ref.crop((left, top, left + 224, top + 224))))
  grey = host_augment.eval_image(np.full((28, 28), 7, np.uint8), 32)
  assert grey.shape == (32, 32, 3) and np.all(grey == 7)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  config = bs.named_config("bossnet_t0", num_classes=10, width_multiplier=0.125, dim_head=8)
  model = bossnet.BossNet(config)
  variables = bossnet.init_variables(model, jax.random.key(0), resolution=32)
  path = str(tmp_path_factory.mktemp("ckpt") / "t0")
  model_checkpoint.save(path, variables, {"kind": "bossnet", "config": config.to_dict()})
  return path


def test_evaluate_a_checkpoint_on_the_embedded_data(checkpoint, tmp_path):
  data_dir = prepare_data(str(tmp_path))
  result = evaluate.evaluate(checkpoint, name=embedded.NAME, split="test", data_dir=data_dir,
                             resolution=32, batch_size=8, limit=12)
  assert result["count"] == 12
  # The same figures computed directly: official preprocessing, the network, top-k by hand.
  from bossnas_jax.data import normalize, sources
  items = sources.open_source(embedded.NAME, "test", data_dir).read(range(12))
  images = np.stack([host_augment.eval_image(img, 32) for img, _ in items])
  labels = np.asarray([label for _, label in items])
  model, variables = model_checkpoint.load_bossnet(checkpoint)
  logits = np.asarray(bossnet.eval_logits(model, variables, normalize.normalize_images(images)))
  order = np.argsort(-logits, axis=-1)
  for k in (1, 5):
    hits = np.mean([labels[i] in order[i, :k] for i in range(12)])
    assert result[f"top{k}"] == pytest.approx(100 * hits)
  with pytest.raises(ValueError, match="resolution=40"):
    evaluate.evaluate(checkpoint, name=embedded.NAME, split="test", data_dir=data_dir,
                      resolution=40)
  out = subprocess.run(
      [sys.executable, "launch/evaluate.py", f"--checkpoint={checkpoint}",
       f"--data_dir={data_dir}", f"--name={embedded.NAME}", "--split=test", "--resolution=32",
       "--limit=8"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "top-1" in out.stdout and "(8 images)" in out.stdout
