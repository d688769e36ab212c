"""Supervised retraining of a searched BossNet (SPEC I.8.4, III.6): optim, state, step, loop."""
