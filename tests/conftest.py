"""Test set-up: 8 simulated CPU devices and JAX's persistent compilation cache.

XLA_FLAGS must be set before jax is imported anywhere, which is why this lives in conftest.
"""

import os

# On 2 shared cores a simulated device can reach a collective long after the others (its thread
# waits behind a cold compile); XLA:CPU aborts the process after 40 s by default, so give it more.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=900 "
                      "--xla_cpu_collective_timeout_seconds=900")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


from bossnas_jax import utils  # noqa: E402

utils.enable_compilation_cache(
    os.environ.get("BOSSNAS_TEST_CACHE",
                   os.path.join(os.path.dirname(__file__), os.pardir, ".jax_cache")))
