"""Device mesh, shardings and multi-process start-up.

One mesh axis, `data`: batches (and the device-resident dataset) are split
over it, parameters are replicated. The same code runs on 1 CPU, 8 GPUs or a
multi-host TPU pod.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def initialize_distributed(
    coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> None:
    """Starts JAX's multi-process runtime when asked to or when a cluster launched us.

    With an explicit coordinator address all three arguments are passed on; otherwise
    `jax.distributed.initialize()` auto-detects SLURM, Open MPI and TPU pod
    environments, and a plain single-process run skips it.
    """
    if coordinator_address:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif any(
        int(os.environ.get(name, "1")) > 1 for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
    ):
        jax.distributed.initialize()


def create_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis name `data`."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding for arrays every device holds whole (parameters, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the `data` axis."""
    return NamedSharding(mesh, PartitionSpec("data"))


def put_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Places a host array that every process holds in full as one global jax.Array.

    Each process supplies only the shards its own devices hold, which is what
    multi-host placement requires (`jax.device_put` of a host array does not).
    """
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def to_host(x: jax.Array) -> np.ndarray:
    """Gathers a (possibly sharded, possibly multi-host) array to a numpy array on every host."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def any_process(value: str | None) -> str | None:
    """Agreement on a flag: `value`, or a stand-in if only another process has one (a host sync)."""
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(value is not None))
    return value or ("a stop signal on another process" if np.any(flags) else None)
