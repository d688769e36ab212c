r"""BossNAS over the HyTra space: the whole experiment in one place.

Full size (docs/method.md#method; 8 accelerators x 64 images per view, 8 accumulation steps):
  python launch/train_blocks.py --config configs/hytra.py --workdir gs://BUCKET/bossnas \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
  Expected: the official search ends with BossNet-T0 (5433-3230-0010-0000), 80.8% top-1 after the
  300-epoch retrain; the official run took 8 GPUs x ~4 days.

Demo (the same experiment shrunk to the embedded Fashion-MNIST data, 2 CPU cores, minutes):
  python launch/train_blocks.py --config configs/hytra.py:demo --workdir runs/demo

Longer demo (4x the images, 2x the epochs per block: the "longer search" that
benchmarks/ranking_quality.py judges beside the demo):
  python launch/train_blocks.py --config configs/hytra.py:demo_long --workdir runs/demo_long
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # One run key; every random draw is folded from it (docs/method.md#d8).

  # ---- Supernet (docs/method.md#search-space, #siamese) ----
  c.model = m = ml_collections.ConfigDict()
  m.width_multiplier = 1.0   # Channels 2048/1024/512/256 at scales 7/14/28/56 times this.
  m.resolution = 224         # Input side; scales are resolution/32 * (1, 2, 4, 8).
  m.dim_head = 64            # Attention head width; heads = (channels/4) / dim_head (8 @7, 4 @14).
  m.neck_hidden = 4096       # Projector fc0 width.
  m.proj_dim = 256           # Projection (and prediction) width.
  m.pred_hidden = 4096       # Predictor hidden width.
  m.compute_dtype = "auto"   # fp32 on CPU, bf16 on GPU/TPU; params fp32 (docs/method.md#d10).

  # ---- Data (docs/method.md#training-iteration, #augmentations, #d8, #d11) ----
  c.data = d = ml_collections.ConfigDict()
  d.name = "imagenet2012"            # Any TFDS image classification data set.
  d.data_dir = ml_collections.FieldReference(None, field_type=str)  # Folder or gs:// with it.
  d.train_split = "train[:-10000]"   # Leaves out the rating slice (docs/method.md#d11).
  d.rating_split = "train[-10000:]"  # 'validation' reproduces the official choice.
  d.calibration_images = 2048        # Fixed images for BN recalibration (docs/method.md#d6).
  d.num_pairs = 4                    # 4 views of pipeline 1 + 4 of pipeline 2 per image.
  d.crop_scale = (0.08, 1.0)         # RandomResizedCrop, torchvision defaults.
  d.crop_ratio = (3 / 4, 4 / 3)
  d.blur_prob = (0.1, 1.0)           # Pipelines 1 / 2; not BYOL's (docs/method.md#augmentations).
  d.solarize_prob = (0.0, 0.2)
  d.worker_count = 8                 # Host decoding processes per host.

  # ---- Block training (docs/method.md#training-iteration, #ema, #optimizer, #differences) ----
  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 512          # Global micro-batch (images per view): 64 per device on 8 devices.
  t.accumulate_steps = 8      # Micro-batches per optimizer step: effective batch 4096.
  t.epochs_per_block = 6
  t.num_paths = 4             # Distinct candidates per micro-batch, shared by online and target.
  t.lr = 4.8                  # LARS; cosine by epoch to 0 within each block.
  t.warmup_epochs = 1         # Linear from lr * warmup_ratio, restarting every block.
  t.warmup_ratio = 1e-4
  t.momentum = 0.9
  t.weight_decay = 1e-6
  t.lars_eta = 0.001
  t.base_ema = 0.99           # EMA momentum, cosine to end_ema within each block.
  t.end_ema = 1.0
  t.checkpoint_every_steps = 500  # Optimizer steps between checkpoints (also one per block end).
  t.keep_checkpoints = 3

  # ---- Rating toward the population centre (docs/method.md#rating, #rating-design, #d6, #d7) ----
  c.rating = r = ml_collections.ConfigDict()
  r.rate_every_epochs = 2     # Ratings within a block; the last one is kept.
  r.batch_size = 2048         # Global batch of the rating and calibration passes.

  # ---- Search and export (docs/method.md#search-and-export, #d9) ----
  c.search = s = ml_collections.ConfigDict()
  s.strategy = "exhaustive"   # Exact Pareto optimum | 'evolution' (paper) | 'greedy' (official).
  s.resolution = 224          # Input side of the final BossNet that budgets and costs refer to.
  s.convention = "true"       # Costs as the network computes them; 'official' = boss_madds.py.
  # Block scores as rated ('none', the official sum), or made comparable across the input scales
  # of a block before they are added: 'zscore' / 'rank' per rank file
  # (search/problem.normalize_scores).
  s.normalize = "none"
  s.max_madds = ml_collections.FieldReference(None, field_type=float)  # Budget, true convention.
  s.max_params = ml_collections.FieldReference(None, field_type=float)
  # Latency as a third cost: a table built on the target device (launch/latency_table.py) at
  # this batch and dtype, and a budget in ms on the predicted latency (docs/method.md#latency).
  s.latency_table = ml_collections.FieldReference(None, field_type=str)
  s.max_latency_ms = ml_collections.FieldReference(None, field_type=float)
  s.latency_batch = 1
  s.latency_dtype = "float32"
  s.population = 50
  s.generations = 20
  s.mutation_prob = 0.1
  s.tournament = 5
  s.crossover_prob = 0.5

  if arg in ("demo", "demo_long"):
    _shrink_to_demo(c)
  if arg == "demo_long":
    c.data.train_split = "train[:8192]"
    c.train.epochs_per_block = 4
  elif arg and arg != "demo":
    raise ValueError(f"configs/hytra.py: unknown argument {arg!r}; use ':demo', ':demo_long' or "
                     "nothing.")
  return c


def _shrink_to_demo(c: ml_collections.ConfigDict) -> None:
  """Same experiment, shrunk to run end to end on the embedded data on 2 CPU cores."""
  c.model.width_multiplier = 1 / 16  # Channels 128/64/32/16.
  c.model.resolution = 32           # Scales 1/2/4/8.
  c.model.dim_head = 8              # Heads 4 @7, 2 @14.
  c.model.neck_hidden = 256
  c.model.proj_dim = 64
  c.model.pred_hidden = 256
  c.data.name = "embedded_fashion_mnist"
  c.data.train_split = "train[:2048]"
  c.data.rating_split = "train[-1000:]"
  c.data.calibration_images = 256
  c.data.worker_count = 0
  c.train.batch_size = 32
  c.train.accumulate_steps = 2
  c.train.epochs_per_block = 2
  c.train.lr = 1.2
  c.train.checkpoint_every_steps = 50
  c.rating.rate_every_epochs = 1
  c.rating.batch_size = 256
  c.search.resolution = 32
  c.search.population = 20
  c.search.generations = 10
