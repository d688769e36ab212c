"""Supervised retraining of a searched BossNet (docs/method.md#retraining-recipe,
#retrain-and-evaluate): optim, state, step, loop, checkpoints, evaluate, metrics."""
