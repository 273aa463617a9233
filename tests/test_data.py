"""Reading the TFDS datasets (shipped subsets, or TFDS_DATA_DIR's) and drawing batches on device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.core import parallel
from jaxdiff.core.errors import UserError
from jaxdiff.data import batches, datasets, tfds_reader


@pytest.mark.parametrize(
    "name, shape",
    [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))],
)
def test_load_split_reads_real_images(name, shape):
    images, labels = tfds_reader.load_split(name, "test[:200]")
    assert images.shape == (200, *shape) and images.dtype == np.uint8
    assert labels.shape == (200,) and set(np.unique(labels)) <= set(range(10))
    assert len(set(np.unique(labels))) > 5  # a real mix of classes
    assert images.max() > 200 and images.min() == 0  # real pixel values, not a blank array
    assert datasets.dataset_info(name).image_shape == shape


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(
        UserError, match=r"unknown data.dataset 'svhn'.*cifar10.*fashion_mnist.*mnist"
    ):
        datasets.dataset_info("svhn")


def test_bad_split_is_one_line():
    with pytest.raises(UserError, match=r"cannot read 'mnist' split 'validation'") as error:
        tfds_reader.load_split("mnist", "validation")
    assert "\n" not in str(error.value)


def test_batches_come_from_the_real_rows_and_flip_correctly():
    mesh = parallel.create_mesh()
    # Five distinct, left-right asymmetric images; padding rows would be all zeros.
    images = np.zeros((5, 4, 4, 1), np.uint8)
    for i in range(5):
        images[i, :, 0] = 10 * (i + 1)
    dataset = batches.to_device(images, np.arange(5, dtype=np.int32), mesh)
    draw = jax.jit(
        lambda key, flip: batches.draw_batch(
            key, dataset, 512, parallel.batch_sharded(mesh), flip, False
        ),
        static_argnums=1,
    )
    batch, labels = jax.device_get(draw(jax.random.key(0), True))
    batch = batch * 255
    left, right = batch[:, 0, 0, 0], batch[:, 0, -1, 0]
    # Exactly one of the two edge columns is lit, with one of the five values.
    assert np.all((left == 0) != (right == 0))
    assert set(np.round(left + right)) == {10.0, 20.0, 30.0, 40.0, 50.0}
    # Each image comes with its own label (image i is lit with 10 (i + 1)).
    np.testing.assert_array_equal(np.round(left + right), 10 * (labels + 1))
    assert 0.4 < np.mean(right > 0) < 0.6  # about half flipped
    unflipped = np.asarray(draw(jax.random.key(0), False)[0])
    assert np.all(unflipped[:, :, -1] == 0)


def test_centering_and_uint8_round_trip():
    x = jnp.asarray([0, 1, 128, 255], jnp.uint8).reshape(1, 2, 2, 1)
    for centered in (False, True):
        scaled = x.astype(jnp.float32) / 255.0
        scaled = 2 * scaled - 1 if centered else scaled
        np.testing.assert_array_equal(batches.to_uint8(scaled, centered), x)
    assert int(batches.to_uint8(jnp.asarray([1.7]), False)[0]) == 255  # clipped, not wrapped
