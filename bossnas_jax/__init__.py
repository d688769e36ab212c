"""bossnas_jax: block-wise self-supervised NAS (BossNAS) over the HyTra space, on JAX."""

__version__ = "0.1.0"
