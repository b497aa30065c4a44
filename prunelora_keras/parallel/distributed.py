"""Data-parallel training on every local device (and across hosts) with ``keras.distribution``.

The training step stays the one compiled function of ``train.Trainer``: its inputs are placed
with a ``keras.distribution.DataParallel`` layout (images and labels split on the batch axis over
a one-axis ``DeviceMesh``, variables and optimiser state replicated), and XLA's SPMD partitioner
turns the step into per-device programs with the all-reduces it needs. Every mean over the batch,
BatchNorm's batch statistics included, is therefore over the global batch: results match a
single device's up to float summation order.

Several hosts: join the job first (``multihost.join``, i.e. ``jax.distributed.initialize``) in
every process before anything touches a device; the mesh then spans all hosts' devices.
Every process holds the same data and draws the same batch order (same seed), and contributes
only the shards that live on its own devices (``jax.make_array_from_callback``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import keras
import numpy as np

from prunelora_keras.errors import UserError


def data_parallel(devices: int = 0) -> keras.distribution.DataParallel | None:
    """A ``DataParallel`` distribution over ``devices`` devices (0: all of them), or None for one.

    Devices are those of JAX's default platform (the accelerators if there are any).
    """
    available = keras.distribution.list_devices()
    if devices < 0:
        raise UserError(f"--devices {devices}: pass 0 (all devices) or a positive count")
    n = len(available) if devices == 0 else devices
    if n > len(available):
        raise UserError(f"--devices {devices}: only {len(available)} device(s) found ({', '.join(available[:4])}); "
                        f"pass at most {len(available)}, or 0 for all")
    if n <= 1:
        return None
    return keras.distribution.DataParallel(devices=available[:n])


def device_count(distribution: keras.distribution.DataParallel | None) -> int:
    return 1 if distribution is None else int(distribution.device_mesh.devices.size)


def check_batch_size(batch_size: int, distribution: keras.distribution.DataParallel | None, what: str) -> None:
    """A global batch must split evenly over the devices (one clear error otherwise)."""
    n = device_count(distribution)
    if batch_size % n:
        raise UserError(f"{what} = {batch_size} does not split evenly over {n} devices: choose a multiple of {n} "
                        f"(e.g. {max(n, batch_size // n * n)}) or pass --devices with a divisor of {batch_size}")


def put_global(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """Every array of ``tree`` laid out with ``sharding``, whose devices may span several processes.

    ``jax.device_put`` cannot reach another process's devices, so in a multi-process job each
    process supplies its own devices' pieces from its host value of the array: every process must
    hold the same values (as it does when every process runs the same program). An array sharded
    over processes already is gathered first (a collective: every process calls this alike).
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    from prunelora_keras.parallel.multihost import host_value

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(leaf(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = host_value(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree_util.tree_map(leaf, tree)


@dataclass
class Placement:
    """Where the step's inputs live: batches split over the mesh's batch axis, state replicated.

    A batch whose size does not split evenly (an epoch's last, smaller batch) is replicated
    instead: every device computes it whole, which is exact, only not parallel.
    """

    distribution: keras.distribution.DataParallel

    def __post_init__(self):
        mesh = self.distribution.device_mesh.backend_mesh
        self.n = int(mesh.devices.size)
        self.replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def batch_sharding(self, shape: tuple[int, ...]) -> jax.sharding.Sharding:
        if shape[0] % self.n:
            return self.replicated
        return self.distribution.get_data_layout(shape).backend_layout

    def put_batch(self, array: Any) -> jax.Array:
        """The global batch as a sharded array; each process supplies only its own devices' shards.

        ``array``: a numpy array or a lazy ``data.Rows`` view, of which each process then gathers
        only the rows of its own devices (``jax.make_array_from_callback`` asks for nothing else).
        """
        if not (hasattr(array, "shape") and hasattr(array, "dtype") and hasattr(array, "__getitem__")):
            array = np.asarray(array)
        return jax.make_array_from_callback(array.shape, self.batch_sharding(array.shape), lambda idx: array[idx])

    def replicate(self, tree: Any) -> Any:
        """Every array of ``tree`` whole on every device of the mesh (all processes' devices).

        In a multi-process job each process supplies its own devices' copies from its host value
        (``device_put`` cannot reach another process's devices); the values must agree, as they do
        when every process runs the same program.
        """
        return put_global(tree, self.replicated)
