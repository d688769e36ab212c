r"""Supervised retraining of a BossNet (docs/method.md#retraining-recipe, the DeiT recipe): the
whole experiment here.

Full size (8 accelerators x 128 images, 300 epochs on ImageNet, as the official README):
  python launch/retrain.py --config configs/retrain.py --workdir gs://BUCKET/bossnet_t0 \
      --arch bossnet_t0 --config.data.data_dir=gs://BUCKET/tensorflow_datasets
  Expected (published, 300 epochs): BossNet-T0 80.8% top-1 / 95.2% top-5 at 224 (T0-nose 80.5,
  T1 81.9); the searched network of a search workdir: --arch SEARCH_DIR/architecture.json, or
  --config SEARCH_DIR/retrain_config.py (written by the search; same recipe plus its network).

Demo (the embedded Fashion-MNIST, 28x28 grey, 10 classes; 2 CPU cores, a few minutes):
  python launch/retrain.py --config configs/retrain.py:demo --workdir runs/demo_retrain \
      --arch runs/demo/architecture.json
  Expected (measured on 2 quiet CPU cores, 3 min 8 s): with the demo search's network
  4444-3323-2222-3332, top-1 71.2% raw / 71.2% EMA on test[:1000] after 10 epochs (chance 10%),
  ECE ~23%; on the whole test split (launch/evaluate.py) 70.8% raw / 70.7% EMA. Five random
  networks of 6-10% fewer MAdds, same recipe: 67.1% +- 1.7 (benchmarks/random_baseline.py).

Ground truth of the ranking benchmark (benchmarks/ranking_quality.py): the demo's network width
and resolution, the whole training split (60,000 images) for 6 epochs at batch 256, crops of
50-100% of the image and none of DeiT's strong regularisers (mixup, cutmix, RandAugment, colour
jitter, random erasing, drop-path), evaluated once, on the whole test split:
  python launch/retrain.py --config configs/retrain.py:ground_truth --workdir runs/gt \
      --arch 4444-4321-1011-0010
  Expected (measured on 2 CPU cores, about 4.5 min): 85.7% EMA top-1 (seed 0), 84.0% (seed 1).
  Why: with the demo recipe two seeds of one network differed by up to 3.7 points of top-1, as
  much as the networks differ from each other; with 3 epochs the Kendall tau between two seeds
  over 8 networks was 0.43 (benchmarks/results/ranking_quality_pilots.json).

`model.arch` is a named model (bossnet_t0, bossnet_t0_nose, bossnet_t1), an architecture string
('5433-3230-0010-0000') or the path of an architecture.json; `--arch` on the command line sets it.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # One run key: initialisation, mixing, erasing, drop-path and data order fold from it.

  # ---- Network (docs/method.md#bossnet-encoding, #bossnet-definition) ----
  c.model = m = ml_collections.ConfigDict()
  m.arch = "bossnet_t0"
  # 'official' (a stage without blocks is a stride-2 conv) or 'stage' (its own stride). None takes
  # the default of what `arch` is: 'official' for the named models, 'stage' for searched ones.
  m.empty_stage_stride = ml_collections.FieldReference(None, field_type=str)
  m.resolution = 224          # Training and evaluation side (a multiple of 32).
  m.width_multiplier = 1.0    # Channels times this (1/16 in the demo, as its search).
  m.dim_head = 64             # Attention head width.
  m.drop_path_rate = 0.1      # Stochastic depth on ResConv blocks, rate * idx / 15 (main.py 0.1).
  m.compute_dtype = "auto"    # fp32 on CPU, bf16 on GPU/TPU; params fp32 (docs/method.md#d10).

  # ---- Data (read by bossnas_jax.data.classification) ----
  c.data = d = ml_collections.ConfigDict()
  d.name = "imagenet2012"
  d.data_dir = ml_collections.FieldReference(None, field_type=str)
  d.train_split = "train"
  d.eval_split = "validation"
  d.worker_count = 8           # Host decoding processes per host.
  d.crop_scale = (0.08, 1.0)   # RandomResizedCrop (bicubic), torchvision defaults.
  d.crop_ratio = (3 / 4, 4 / 3)
  d.randaugment = "rand-m9-mstd0.5-inc1"
  d.color_jitter = 0.4
  d.repeats = 3                # Repeated-augmentation sampler (DeiT's RASampler).

  # ---- Batch augmentation and regularisation (read by bossnas_jax.data.mixing, per device) ----
  c.augment = a = ml_collections.ConfigDict()
  a.erase_prob = 0.25
  a.erase_mode = "pixel"
  a.erase_count = 1
  a.mixup = 0.8                # Beta(0.8, 0.8) mixup ...
  a.cutmix = 1.0               # ... or Beta(1, 1) cutmix,
  a.switch_prob = 0.5          # chosen with probability 0.5 per batch,
  a.mix_prob = 1.0             # for every batch.
  a.label_smoothing = 0.1

  # ---- Optimisation (docs/method.md#retraining-recipe; bossnas_jax/retrain/optim.py) ----
  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 1024          # Global: 8 devices x 128 as the official command.
  t.epochs = 300
  t.base_lr = 5e-4             # Peak lr = base_lr * batch_size / 512 (1e-3 at 1024).
  t.warmup_epochs = 5.0
  t.warmup_lr = 1e-6
  t.min_lr = 1e-5
  t.weight_decay = 0.05        # Not on biases and norm parameters.
  t.b1 = 0.9
  t.b2 = 0.999
  t.eps = 1e-8
  t.clip_grad = ml_collections.FieldReference(None, field_type=float)  # DeiT: none.
  t.ema_decay = 0.99996        # Model EMA (params and BN statistics), after every step.
  t.checkpoint_every_steps = 1000  # Also one at the end of every epoch.
  t.keep_checkpoints = 3
  t.log_every_steps = 50

  # ---- Evaluation (raw and EMA model after every epoch; official preprocessing) ----
  c.eval = e = ml_collections.ConfigDict()
  e.batch_size = 1536          # 1.5x the train batch, as DeiT.
  e.every_epochs = 1
  e.calibration_bins = 15      # Expected calibration error over 15 equal-width bins.

  if arg in ("demo", "ground_truth"):
    _shrink_to_demo(c)
  if arg == "ground_truth":
    _ground_truth(c)
  elif arg and arg != "demo":
    raise ValueError(f"configs/retrain.py: unknown argument {arg!r}; use ':demo', "
                     "':ground_truth' or nothing.")
  return c


def _shrink_to_demo(c: ml_collections.ConfigDict) -> None:
  """Same recipe on the embedded data, 2 CPU cores, a few minutes (the demo search's width)."""
  c.model.arch = "bossnet_t0"
  c.model.resolution = 32
  c.model.width_multiplier = 1 / 16
  c.model.dim_head = 8
  c.model.drop_path_rate = 0.05  # A 0.14M-parameter network needs less stochastic depth.
  c.data.name = "embedded_fashion_mnist"
  c.data.train_split = "train[:8192]"
  c.data.eval_split = "test[:1000]"
  c.data.worker_count = 0
  c.data.repeats = 1
  c.train.batch_size = 64
  c.train.epochs = 10
  c.train.base_lr = 8e-3        # Peak 1e-3 at batch 64 (5e-4 would give 6e-5: too slow here).
  c.train.warmup_epochs = 1.0
  # The official EMA averages over ~1 / (1 - 0.99996) = 25k steps, 1/15 of its 375k steps; 0.98
  # (~50 steps) keeps the demo's EMA a similarly small part of its 1,280 steps.
  c.train.ema_decay = 0.98
  c.train.checkpoint_every_steps = 100
  c.train.log_every_steps = 10
  c.eval.batch_size = 200


def _ground_truth(c: ml_collections.ConfigDict) -> None:
  """The demo's network width and resolution, trained on the whole training split for 6 epochs at
  batch 256, with mild crops and without the regularisers that a 0.2M-parameter network does not
  need. 3 epochs left the two seeds of a network as far apart as the networks are from each other
  (Kendall tau 0.43 between seeds over 8 networks; benchmarks/results/ranking_quality_pilots.json),
  so the recipe was lengthened, as the ranking benchmark's protocol asks."""
  c.data.train_split = "train"
  c.data.randaugment = None
  c.data.color_jitter = None  # timm uses it only when RandAugment is off: off too.
  c.data.crop_scale = (0.5, 1.0)  # A crop of 8% of a 28x28 garment often leaves no garment.
  c.augment.mixup = 0.0
  c.augment.cutmix = 0.0
  c.augment.erase_prob = 0.0
  c.model.drop_path_rate = 0.0
  c.train.batch_size = 256
  c.train.epochs = 6
  c.train.base_lr = 1.6e-2        # Peak 8e-3 at batch 256 (2e-3 fitted worse: loss 0.96 vs 0.83).
  c.train.warmup_epochs = 0.5
  c.train.checkpoint_every_steps = 100
  c.data.eval_split = "test"      # All 10,000 test images,
  c.eval.every_epochs = 6         # once, after the last epoch.
  c.eval.batch_size = 400
