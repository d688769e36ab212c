"""Devices, hosts and the 1-D data mesh (SPEC III.2).

Every step runs as `jax.jit(jax.shard_map(...))` over a mesh with one axis, 'data', that spans all
devices of all hosts. Parameters are replicated; batches are split along their first axis.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


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


def data_mesh() -> jax.sharding.Mesh:
  """All devices of all hosts on one 'data' axis. Auto axis types let jit place gathers (the
  shuffle-BN permutation) without explicit resharding."""
  return jax.make_mesh((jax.device_count(),), (AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def replicate(tree, mesh):
  return jax.device_put(tree, replicated(mesh))


def check_batch(global_batch: int, what: str = "train.batch_size") -> int:
  """The per-device batch; a global batch that the device count does not divide is an error."""
  n = jax.device_count()
  if global_batch % n:
    hint = n * max(1, global_batch // n)
    raise ValueError(
        f"{what}={global_batch} does not split evenly over {n} devices "
        f"({jax.process_count()} host(s)); use a multiple of {n}, e.g. {hint}.")
  return global_batch // n


def host_batch_to_global(local: np.ndarray, mesh) -> jax.Array:
  """This host's slice of a batch (first axis) -> one global array split over 'data'."""
  return jax.make_array_from_process_local_data(batch_sharded(mesh), local)
