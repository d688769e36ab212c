r"""Top-1/top-5 and ECE of a BossNet checkpoint (native or converted from PyTorch) on a TFDS split.

  python launch/evaluate.py --checkpoint ckpt/t0 --data_dir /data/tfds --name imagenet2012 \
      --split validation --resolution 224
  python launch/evaluate.py --checkpoint runs/demo_retrain --ema
--checkpoint is a converted checkpoint (python -m bossnas_jax.convert import ...), the bossnet_raw
or bossnet_ema export of a retraining workdir, or the workdir itself (newest step; --ema for the
EMA weights). Without --data_dir it reads the embedded default data (Fashion-MNIST, split 'test').
ECE: expected calibration error over 15 equal-width confidence bins.
"""


from absl import flags

from bossnas_jax.data import embedded
from bossnas_jax.infra import cli
from bossnas_jax.retrain import evaluate

_CKPT = flags.DEFINE_string("checkpoint", None, "BossNet checkpoint folder (models/checkpoint.py).")
_NAME = flags.DEFINE_string("name", None, "TFDS data set (default: the embedded Fashion-MNIST).")
_SPLIT = flags.DEFINE_string("split", None, "Split (default 'validation', embedded: 'test').")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder or gs:// holding the prepared data set.")
_RES = flags.DEFINE_integer("resolution", None, "Evaluation side (a multiple of 32); default: "
                            "that of the retraining run, else 224.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per batch.")
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate only the first N images.")
_EMA = flags.DEFINE_bool("ema", False, "From a retraining workdir: the EMA weights.")
flags.mark_flags_as_required(["checkpoint"])


def main(argv):
  del argv
  name = _NAME.value or (embedded.NAME if _DATA_DIR.value is None else "imagenet2012")
  split = _SPLIT.value or ("test" if name == embedded.NAME else "validation")
  resolution = (_RES.value if _RES.value is not None
                else evaluate.default_resolution(_CKPT.value))
  result = evaluate.evaluate(_CKPT.value, name=name, split=split, data_dir=_DATA_DIR.value,
                             resolution=resolution, batch_size=_BATCH.value, limit=_LIMIT.value,
                             ema=_EMA.value)
  print(f"{name}:{split} at {resolution}: top-1 {result['top1']:.2f}%  top-5 "
        f"{result['top5']:.2f}%  ECE {result['ece']:.2f}%  ({result['count']} images)")


if __name__ == "__main__":
  cli.run(main)
