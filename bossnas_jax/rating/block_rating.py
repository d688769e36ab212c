"""Rating a trained block (docs/method.md#rating-design): every candidate of every input scale
toward its population centre, written to the rank files; also inside a block, after the epochs
`rating.rate_every_epochs` names, to see how early the ranking settles.
"""

from __future__ import annotations

import jax

from bossnas_jax import search_space as ss
from bossnas_jax.data import pipeline
from bossnas_jax.infra import files
from bossnas_jax.models import siamese
from bossnas_jax.rating import population_centre, rank_files
from bossnas_jax.train import loop


def rating_epochs(config) -> set[int]:
  """Epochs (1-based) after which a block is rated: every `rating.rate_every_epochs`, and always
  after the last one, whose rating is the one kept (the prefix is frozen from those weights)."""
  epochs, every = int(config.train.epochs_per_block), int(config.rating.rate_every_epochs)
  return set(range(every, epochs + 1, every)) | {epochs}


def rate_block(run: loop.Run, block: int, state: siamese.BlockState,
               chains: dict[int, list[loop.Frozen]], epoch: int | None = None
               ) -> dict[int, dict[ss.Path, float]]:
  """Rates every candidate at every input scale and writes the rank files
  (docs/method.md#rating-design).

  `epoch` (default: the block's last) is recorded in the rank files; each rating replaces the
  previous one there and keeps a copy under ratings/history/.
  """
  trainers = loop.trainers_for(run, block, chains)
  epochs = int(run.config.train.epochs_per_block) if epoch is None else int(epoch)
  rating_set = pipeline.rating_set(
      run.config.data, resolution=run.dims.resolution, seed=int(run.config.seed),
      rating_index=block, global_batch_size=loop.calibration_batch(run.config), mesh=run.mesh)
  out = {}
  for s, chain in sorted(chains.items(), reverse=True):
    prefix_vars = tuple(f.variables for f in chain)
    key = run.calibration_key(block)
    calib = [x for x, _ in loop.block_inputs(run, trainers[s], prefix_vars,
                                             run.calibration_set(), key)]
    rated = loop.block_inputs(run, trainers[s], prefix_vars, rating_set,
                              jax.random.fold_in(key, 1))
    rater = population_centre.Rater(trainers[s].models, run.mesh, state, s, calib, rated)
    prefix = "-".join(ss.format_path(f.block.path) for f in chain)
    cands = list(ss.candidates(block, s))
    progress = {"block": block, "in_scale": s, "prefix": prefix, "epochs": epochs}
    scores = population_centre.rate(rater, cands, workdir=run.workdir, block=block,
                                    progress_key=progress,
                                    desc=f"rating block {block} from {ss.SCALE_NAMES[s]}x"
                                         f"{ss.SCALE_NAMES[s]} ({len(cands)} candidates)")
    if jax.process_index() == 0:
      path = rank_files.write_rank_file(run.workdir, block, s, prefix, scores, rating_index=block,
                                        epoch=epochs, num_images=rating_set.num_images,
                                        dims=run.dims)
      files.copy(path, rank_files.history_path(run.workdir, block, s, epochs))
    population_centre.clear_progress(run.workdir, block, s)
    out[s] = scores
  return out


def rate_within(run: loop.Run, block: int, state: siamese.BlockState,
                chains: dict[int, list[loop.Frozen]], epoch: int) -> None:
  """A rating inside the block (after `epoch`), unless its rank files already hold it."""
  def done(s):
    path = rank_files.rank_file_path(run.workdir, block, s)
    return files.exists(path) and rank_files.read_rank_file(path).epoch == epoch

  if not all(done(s) for s in chains):
    rate_block(run, block, state, chains, epoch=epoch)
