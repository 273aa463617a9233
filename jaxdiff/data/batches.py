"""Training data on the device(s): uint8 arrays -> random batches drawn inside the jitted step.

A training split that fits (MNIST, Fashion-MNIST and CIFAR-10 are < 200 MB
as uint8) lives on the accelerators, sharded over the `data` mesh axis. Each
step draws random indices and gathers its batch on device: there is no host
input pipeline and no per-step host-to-device copy. Because the indices are
global, the batch a step sees does not depend on the number of devices.
Larger splits stay on the host and are streamed (`jaxdiff.data.streaming`): the
host draws the same indices and sends the rows, so a step sees the same batch
on both paths. Which images a split holds is `jaxdiff.data.datasets`.
"""

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxdiff.core import parallel


@flax.struct.dataclass
class DeviceDataset:
    """A uint8 image array resident on the mesh, sharded over `data`.

    `images` is padded to a multiple of the device count; batches draw only from
    the first `num_examples` rows.
    """

    images: jax.Array
    labels: jax.Array
    num_examples: int = flax.struct.field(pytree_node=False)


def to_device(images: np.ndarray, labels: np.ndarray, mesh: Mesh) -> DeviceDataset:
    """Pads the split to a multiple of the device count and shards it over the mesh."""
    num = len(images)
    pad = -num % mesh.size
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    sharding = parallel.batch_sharded(mesh)
    return DeviceDataset(
        parallel.put_global(images, sharding), parallel.put_global(labels, sharding), num
    )


@flax.struct.dataclass
class StreamedBatches:
    """Batches gathered on the host (`jaxdiff.data.streaming`) for the steps of one train call.

    `images` (steps, B, ...) and `labels` (steps, B), sharded over the batch
    axis; a train call hands each step its own (B, ...) slice, also a
    `StreamedBatches`.
    """

    images: jax.Array
    labels: jax.Array


def batch_indices(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """The rows `draw_batch` takes with `key` (uniform, with replacement)."""
    index_key, _ = jax.random.split(key)
    return jax.random.randint(index_key, (batch_size,), 0, num_examples)


def draw_batch(
    key: jax.Array,
    dataset: DeviceDataset | StreamedBatches,
    batch_size: int,
    sharding: NamedSharding,
    random_flip: bool,
    centered: bool,
) -> tuple[jax.Array, jax.Array]:
    """Draws a random batch (with replacement) and augments it; call inside jit.

    From a `DeviceDataset` the rows `batch_indices(key)` are gathered on device;
    a step's `StreamedBatches` already holds those rows, gathered on the host.
    uint8 images become float32 in [0, 1] (or [-1, 1] if centered); float data
    (latent diffusion's latents) is returned as stored.

    Returns:
      The batch and its int32 labels, both sharded over the batch axis.
    """
    _, flip_key = jax.random.split(key)
    if isinstance(dataset, StreamedBatches):
        x, labels = dataset.images, dataset.labels
    else:
        index = batch_indices(key, dataset.num_examples, batch_size)
        x, labels = dataset.images[index], dataset.labels[index]
    x = jax.lax.with_sharding_constraint(x, sharding)
    labels = jax.lax.with_sharding_constraint(labels, sharding)
    if x.dtype != jnp.uint8:
        return x, labels
    x = to_model_range(x, centered)
    if random_flip:
        flip = jax.random.bernoulli(flip_key, 0.5, (batch_size, 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1, :], x)
    return x, labels


def to_model_range(images: jax.Array, centered: bool) -> jax.Array:
    """uint8 pixels -> the float range the models see ([0, 1], or [-1, 1] if centered)."""
    x = images.astype(jnp.float32) / 255.0
    return 2.0 * x - 1.0 if centered else x


def to_uint8(x: jax.Array, centered: bool) -> jax.Array:
    """Maps model-space images back to uint8 pixels (clipping what falls outside)."""
    if centered:
        x = (x + 1.0) / 2.0
    return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0).astype(jnp.uint8)


# Images per call when a whole split goes through a network (encoder, classifier).
MAP_CHUNK = 500


def map_in_chunks(fn: Callable, images: np.ndarray, chunk: int = MAP_CHUNK) -> Any:
    """Applies a jitted batch function to a host array chunk by chunk (one compile).

    The last chunk is zero-padded to full size, so `fn` sees one shape. Its
    output (an array, or a tuple of arrays) comes back as numpy, concatenated
    along the first axis.
    """
    outputs = []
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk]
        padded = np.concatenate([part, np.zeros((chunk - len(part), *part.shape[1:]), part.dtype)])
        num = len(part)
        outputs.append(jax.tree.map(lambda out, num=num: np.asarray(out)[:num], fn(padded)))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
