"""Devices, hosts and the 1-D data mesh (docs/method.md#state-and-step).

Every step runs as `jax.jit(jax.shard_map(...))` over a mesh with one axis, 'data', that spans all
devices of all hosts. Parameters are replicated; batches are split along their first axis.
"""

from __future__ import annotations

import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
# Compute dtypes by name; 'auto' is float32 on CPU and bfloat16 on accelerators
# (docs/method.md#d10; parameters stay float32).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
COMPUTE_DTYPES = ("auto", *DTYPES)


def compute_dtype(name: str):
  """The compute dtype a config names (one of COMPUTE_DTYPES)."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return DTYPES[name]


# The two partition specs of every program: replicated (parameters), split along the batch.
REPLICATED = P()
BATCH = P(AXIS)


# How long XLA:CPU lets a collective wait for a device or host that is late, in seconds. Its own
# limits (40 s before it terminates the process) are shorter than the minute a 2-core machine can
# spend compiling a block's programs while the simulated devices' programs wait, so a busy machine
# could abort a healthy run. Only the CPU backend reads these flags.
CPU_COLLECTIVE_TIMEOUT_S = 600
_CPU_COLLECTIVE_FLAGS = ("xla_cpu_collective_timeout_seconds",
                         "xla_cpu_collective_call_terminate_timeout_seconds")


def default_cpu_collective_timeouts(environ=os.environ) -> None:
  """Adds CPU_COLLECTIVE_TIMEOUT_S for each XLA:CPU collective limit that XLA_FLAGS does not set
  already. XLA reads XLA_FLAGS when the backend starts, so call this before any computation."""
  current = environ.get("XLA_FLAGS", "")
  extra = [f"--{name}={CPU_COLLECTIVE_TIMEOUT_S}" for name in _CPU_COLLECTIVE_FLAGS
           if f"--{name}=" not in current]
  if extra:
    environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()


def maybe_initialize_distributed() -> None:
  """Joins a multi-host job when the environment describes one, else does nothing.

  On Cloud TPU pods `jax.distributed.initialize()` finds everything itself; elsewhere set
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or pass nothing on a single host).
  """
  if jax.distributed.is_initialized():
    return
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"):
    jax.distributed.initialize()
  else:
    return
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    warm_up_cpu_collectives()


def warm_up_cpu_collectives() -> None:
  """Opens, while all processes are still in step, the gloo connections that later collectives
  use: the whole 'data' mesh (every training program) and the per-process pairs of
  `multihost_utils` (Orbax's barriers, `assert_same_on_all_hosts`).

  XLA:CPU connects a group of devices at the first collective that group runs, and gives up if
  the other processes do not arrive within gloo's fixed 30 s ("Gloo context initialization
  failed ... GetKeyValue() timed out"). Processes that compile for minutes drift further apart
  than that; once connected, a collective waits as long as --xla_cpu_collective_timeout_seconds.
  """
  mesh = data_mesh()
  total = jax.jit(jax.shard_map(lambda x: jax.lax.psum(x, AXIS), mesh=mesh, in_specs=P(AXIS),
                                out_specs=P()))
  ones = host_batch_to_global(np.ones((jax.local_device_count(),), np.int32), mesh)
  if int(np.asarray(total(ones))[0]) != jax.device_count():
    raise RuntimeError("the warm-up psum over all devices gave a wrong result.")
  multihost_utils.sync_global_devices("bossnas_jax: collectives warmed up")


def data_mesh() -> jax.sharding.Mesh:
  """All devices of all hosts on one 'data' axis. Auto axis types let jit place gathers (the
  shuffle-BN permutation) without explicit resharding."""
  return jax.make_mesh((jax.device_count(),), (AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, REPLICATED)


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, BATCH)


def replicate(tree, mesh):
  """`tree` (host or single-device values, the same on every host) replicated over the mesh.

  On several hosts `jax.device_put` would compare every leaf across hosts with a collective of its
  own (a compile and a gloo exchange per leaf; on slow hosts one of them can time out). Here each
  host places its own copy on its own devices and one digest of the whole tree is compared
  across hosts, so a host whose values differ (an initialisation that depends on the process)
  is still an error.
  """
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  leaves, treedef = jax.tree.flatten(tree)
  digest = hashlib.sha256()
  out = [_replicate_leaf(x, sharding, digest) for x in leaves]
  assert_same_on_all_hosts(digest, "the values being replicated")
  return jax.tree.unflatten(treedef, out)


def _replicate_leaf(x, sharding, digest):
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = _replicate_leaf(jax.random.key_data(x), sharding, digest)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.sharding.is_equivalent_to(sharding, x.ndim):
      return x
    raise ValueError(f"cannot replicate an array sharded as {x.sharding} across hosts.")
  a = np.asarray(jax.device_get(x))
  digest.update(f"{a.dtype}{a.shape}".encode())
  digest.update(np.ascontiguousarray(a).tobytes())
  return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


def assert_same_on_all_hosts(digest, what: str) -> None:
  """Raises unless every host computed the same `digest` (a hashlib object): one collective."""
  words = np.frombuffer(digest.digest(), np.uint32)
  multihost_utils.assert_equal(
      words, fail_message=f"{what} differ between hosts (process {jax.process_index()}).")


def check_batch(global_batch: int, what: str = "train.batch_size") -> int:
  """The per-device batch; a global batch that the device count does not divide is an error."""
  n = jax.device_count()
  if global_batch % n:
    hint = n * max(1, global_batch // n)
    raise ValueError(
        f"{what}={global_batch} does not split evenly over {n} devices "
        f"({jax.process_count()} host(s)); use a multiple of {n}, e.g. {hint}.")
  return global_batch // n


def fetch(tree):
  """NumPy copies of the whole global values of `tree`, on every host.

  On one host this is `jax.device_get`. Across hosts an array split over the mesh has shards this
  host cannot read, so it is gathered first: a collective, so every host must call this at the
  same point (replicated arrays are read from a local copy, no communication).
  """
  def leaf(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(leaf, tree)


def host_batch_to_global(local: np.ndarray, mesh) -> jax.Array:
  """This host's slice of a batch (first axis) -> one global array split over 'data'."""
  return jax.make_array_from_process_local_data(batch_sharded(mesh), local)
