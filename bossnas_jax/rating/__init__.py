"""Rating toward the population centre: exact BN statistics, the rating, rank files."""
