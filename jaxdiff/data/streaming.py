"""Training data that stays on the host: batches gathered with grain, placed on the mesh ahead.

A split too large for the devices (`config.data.on_device`) is read from its host
array, usually the memory-mapped cache of `jaxdiff.data.datasets`, so it need not
fit in memory either. For each train call the host computes the rows every
step of the call would draw on device (`batches.batch_indices` with the same keys),
gathers them in grain's reader threads, and places them on the mesh while the
previous call runs. A step therefore sees exactly the batch the device-resident
path would give it: the same rows, the same flips, for any number of devices.
"""

import logging
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiff.core import parallel
from jaxdiff.core.compiler import device_memory, jit
from jaxdiff.data import batches

logger = logging.getLogger("jaxdiff")

# data.on_device="auto" keeps a split on the devices when it takes at most this
# share of each device's memory: the rest is for parameters, optimizer state
# and activations.
AUTO_DEVICE_SHARE = 0.25
# Train calls whose batches are gathered ahead of the one running.
PREFETCH_CALLS = 2

# (run key, step) -> the key `batches.draw_batch` receives at that step.
BatchKeyFn = Callable[[jax.Array, jax.Array], jax.Array]


def device_memory_bytes() -> int:
    """The memory one device can use (on CPU, its share of the host's)."""
    capacity, _, sharing = device_memory(jax.local_devices()[0])
    return capacity // sharing


def keep_on_device(choice: str, nbytes: int, mesh: Mesh) -> bool:
    """`data.on_device`: "always", "never", or "auto" (the split's share of device memory)."""
    if choice in ("always", "never"):
        return choice == "always"
    return nbytes / mesh.size <= AUTO_DEVICE_SHARE * device_memory_bytes()


class HostStream:
    """A host-resident split that `loop.run_training` streams to the mesh, call by call.

    Args:
      images: (N, ...) array (a numpy array or memory map), any dtype.
      labels: (N,) int32.
      mesh: the devices' mesh; batches are sharded over its `data` axis.
      batch_key: the training step's key derivation (see `BatchKeyFn`).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        mesh: Mesh,
        batch_key: BatchKeyFn,
    ):
        self.images, self.labels = images, np.asarray(labels, np.int32)
        self.num_examples = len(images)
        self.mesh = mesh
        self.batch_key = batch_key
        self._sharding = NamedSharding(mesh, PartitionSpec(None, "data"))

    def indices(
        self, key: jax.Array, first_step: int, num_steps: int, batch_size: int
    ) -> np.ndarray:
        """(num_steps, batch_size) rows of steps first_step, first_step + 1, ...."""
        draw = _indices_fn(self.batch_key, self.num_examples, batch_size, num_steps)
        return np.asarray(jax.device_get(draw(key, first_step)))

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The images and labels of `rows` (any shape of row ids) from the host arrays."""
        flat = rows.reshape(-1)
        # Reading sorted rows from a memory map keeps the disk access sequential.
        order = np.argsort(flat, kind="stable")
        images = np.empty((len(flat), *self.images.shape[1:]), self.images.dtype)
        images[order] = self.images[flat[order]]
        return (
            images.reshape(*rows.shape, *self.images.shape[1:]),
            self.labels[flat].reshape(rows.shape),
        )

    def calls(
        self, key: jax.Array, first_step: int, last_step: int, steps_per_call: int, batch_size: int
    ) -> Iterator[batches.StreamedBatches]:
        """The batches of each train call from `first_step` to `last_step`, on the mesh.

        grain gathers the calls' rows in reader threads ahead of use; each call's
        batches are placed on the mesh one call before they are needed.
        """
        import grain  # Imported here: only streamed runs need it.

        starts = list(range(first_step, last_step, steps_per_call))

        def host_batches(start: int) -> tuple[np.ndarray, np.ndarray]:
            return self.gather(self.indices(key, start, steps_per_call, batch_size))

        reader = (
            grain.MapDataset.source(starts)
            .map(host_batches)
            .to_iter_dataset(
                grain.ReadOptions(num_threads=PREFETCH_CALLS, prefetch_buffer_size=PREFETCH_CALLS)
            )
        )
        placed = []
        for images, labels in reader:
            placed.append(
                batches.StreamedBatches(
                    parallel.put_global(images, self._sharding),
                    parallel.put_global(labels, self._sharding),
                )
            )
            if len(placed) > 1:
                yield placed.pop(0)
        yield from placed


_INDEX_FNS: dict = {}


def _indices_fn(batch_key: BatchKeyFn, num_examples: int, batch_size: int, num_steps: int):
    """A jitted (key, first_step) -> (num_steps, batch_size) rows, one compile per shape."""
    cache_key = (batch_key, num_examples, batch_size, num_steps)
    if cache_key not in _INDEX_FNS:

        def rows(key, first_step):
            steps = first_step + jnp.arange(num_steps)
            return jax.vmap(
                lambda step: batches.batch_indices(batch_key(key, step), num_examples, batch_size)
            )(steps)

        _INDEX_FNS[cache_key] = jit(rows)
    return _INDEX_FNS[cache_key]


def training_data(
    images: np.ndarray,
    labels: np.ndarray,
    mesh: Mesh,
    on_device: str,
    batch_key: BatchKeyFn,
    what: str = "training data",
) -> batches.DeviceDataset | HostStream:
    """The split on the devices (`batches.to_device`) or streamed from the host.

    `on_device` is `config.data.on_device`.
    """
    nbytes = int(np.prod(images.shape)) * images.dtype.itemsize
    if keep_on_device(on_device, nbytes, mesh):
        logger.info(
            "%s: %d examples (%.2f GiB) on the device(s)", what, len(images), nbytes / 2**30
        )
        return batches.to_device(images, labels, mesh)
    logger.info(
        "%s: %d examples (%.2f GiB) streamed from the host (data.on_device=%s; %.1f GiB of "
        "memory per device)",
        what,
        len(images),
        nbytes / 2**30,
        on_device,
        device_memory_bytes() / 2**30,
    )
    return HostStream(images, labels, mesh, batch_key)
