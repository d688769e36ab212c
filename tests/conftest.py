"""Test set-up: 8 simulated CPU devices and JAX's persistent compilation cache.

XLA_FLAGS must be set before jax is imported anywhere, which is why this lives in conftest.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


from bossnas_jax import utils  # noqa: E402

utils.enable_compilation_cache(
    os.environ.get("BOSSNAS_TEST_CACHE",
                   os.path.join(os.path.dirname(__file__), os.pardir, ".jax_cache")))
