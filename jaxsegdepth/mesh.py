"""The one device-mesh helper every mode uses: a 1-D `data` axis over all devices.

Batches are split along `data`; parameters and optimizer state are replicated. The same code
runs on one CPU, several GPUs, or several hosts after `jax.distributed.initialize()`.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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


def check_batch_size(mesh: Mesh, global_batch_size: int) -> int:
    """Returns this process's share of the global batch; raises if it cannot be split evenly."""
    devices, processes = mesh.devices.size, jax.process_count()
    if global_batch_size % devices:
        raise ValueError(
            f"batch_size={global_batch_size} must be a multiple of the number of devices ({devices})")
    return global_batch_size // processes


def shard_batch(mesh: Mesh, batch: dict) -> dict:
    """Turns this process's NumPy batch into global arrays sharded along `data`."""
    sharding = batch_sharding(mesh)
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for name, value in batch.items()}
