"""The one device-mesh helper every mode uses: a 1-D `data` axis over all devices.

Batches are split along `data`; parameters and optimizer state are replicated. The same code
runs on one CPU, several GPUs, or several hosts after `jax.distributed.initialize()`.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsegdepth import errors

DATA_AXIS = "data"


def create_mesh(devices=None) -> Mesh:
    """A mesh over `devices` (default: every device of every process) with one `data` axis."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split across the `data` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(mesh: Mesh, global_batch_size: int, field: str = "batch_size") -> int:
    """This process's share of the global batch; a `UsageError` naming `field` when the batch
    cannot be split evenly over the devices and processes."""
    devices, processes = mesh.devices.size, jax.process_count()
    if global_batch_size <= 0 or global_batch_size % devices or global_batch_size % processes:
        raise errors.UsageError(
            f"{field}={global_batch_size} must be a positive multiple of the "
            f"number of devices ({devices}) and of processes ({processes})"
        )
    return global_batch_size // processes


def shard_batch(mesh: Mesh, batch: dict) -> dict:
    """Turns this process's NumPy batch into global arrays sharded along `data`."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in batch.items()
    }
