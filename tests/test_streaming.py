"""Streaming from the host gives every step the batch the device-resident path gives it."""

import jax
import numpy as np
import pytest

from jaxdiff.core.random import score_batch_key, step_keys
from jaxdiff.data import batches, streaming

from .conftest import run_script_on_devices


def host_stream(num=37, mesh=None):
    images = np.arange(num * 4, dtype=np.uint8).reshape(num, 2, 2, 1)
    labels = np.arange(num, dtype=np.int32) % 10
    mesh = mesh or jax.make_mesh((1,), ("data",))
    return streaming.HostStream(images, labels, mesh, score_batch_key), images, labels


def test_stream_rows_are_the_rows_draw_batch_takes():
    stream, images, labels = host_stream()
    key = jax.random.key(3)
    rows = stream.indices(key, first_step=10, num_steps=3, batch_size=8)
    assert rows.shape == (3, 8)
    for j in range(3):
        expected = batches.batch_indices(score_batch_key(key, 10 + j), 37, 8)
        np.testing.assert_array_equal(rows[j], expected)
    got_images, got_labels = stream.gather(rows)
    np.testing.assert_array_equal(got_images, images[rows])
    np.testing.assert_array_equal(got_labels, labels[rows])


def test_calls_continue_from_any_step_and_stop_at_the_last():
    stream, images, _ = host_stream()
    key = jax.random.key(0)
    calls = list(stream.calls(key, 4, 10, steps_per_call=2, batch_size=8))
    assert len(calls) == 3
    for call, start in zip(calls, (4, 6, 8), strict=True):
        assert call.images.shape == (2, 8, 2, 2, 1)
        np.testing.assert_array_equal(
            np.asarray(call.images), images[stream.indices(key, start, 2, 8)]
        )
    # The classifier's and autoencoder's key derivation streams as well.
    other = streaming.HostStream(
        images, np.zeros(37, np.int32), stream.mesh, lambda k, s: step_keys(k, s)[0]
    )
    first = next(other.calls(key, 0, 2, 2, 8))
    expected = [batches.batch_indices(step_keys(key, s)[0], 37, 8) for s in (0, 1)]
    np.testing.assert_array_equal(np.asarray(first.images), images[np.stack(expected)])


def test_auto_keeps_a_split_on_the_device_up_to_a_quarter_of_its_memory(monkeypatch):
    mesh = jax.make_mesh((1,), ("data",))
    monkeypatch.setattr(streaming, "device_memory_bytes", lambda: 1000)
    assert streaming.keep_on_device("auto", 250, mesh)
    assert not streaming.keep_on_device("auto", 251, mesh)
    assert streaming.keep_on_device("always", 10**12, mesh)
    assert not streaming.keep_on_device("never", 1, mesh)
    placed = streaming.training_data(
        np.zeros((300, 1), np.uint8), np.zeros(300, np.int32), mesh, "auto", score_batch_key
    )
    assert isinstance(placed, streaming.HostStream)


STEP_SCRIPT = """
import json, sys
import jax, numpy as np
sys.path.insert(0, ".")
from jaxdiff.configs import mnist
from tests.conftest import apply_overrides, tiny_overrides
from jaxdiff.data import batches
from jaxdiff.data import streaming, tfds_reader
from jaxdiff.experiment import create_experiment
from jaxdiff.training.state import create_optimizer, create_replicated_train_state
from jaxdiff.core.random import score_batch_key
from jaxdiff.training.score import make_train_call

config = apply_overrides(mnist.get_config(), tiny_overrides())
config.training.steps_per_call = 2
config.data.random_flip = True  # the flips must agree too
experiment = create_experiment(config)
images, labels = tfds_reader.load_split("mnist", "train[:100]")
tx = create_optimizer(config.training)
call = make_train_call(experiment.model, experiment.sde, tx, config, experiment.mesh)
key = jax.random.key(1)
result = {}
for path in ("device", "stream"):
    state = create_replicated_train_state(jax.random.key(0), experiment, tx)
    if path == "device":
        batches = [batches.to_device(images, labels, experiment.mesh)] * 2
    else:
        stream = streaming.HostStream(images, labels, experiment.mesh, score_batch_key)
        batches = list(stream.calls(key, 0, 4, 2, config.training.batch_size))
    losses = []
    for batch in batches:
        state, metrics = call(state, key, batch)
        losses += np.asarray(metrics["loss"]).tolist()
    result[path] = {
        "loss": losses,
        "params": float(sum(np.abs(np.asarray(p)).sum() for p in jax.tree.leaves(state.params))),
    }
result["devices"] = jax.device_count()
print(json.dumps(result))
"""


def run_steps(devices: int) -> dict:
    return run_script_on_devices(STEP_SCRIPT, devices)


@pytest.mark.slow  # two processes compiling a train call twice each
def test_streamed_training_equals_device_resident_training_on_one_and_four_devices():
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        one, four = pool.map(run_steps, (1, 4))
    assert (one["devices"], four["devices"]) == (1, 4)
    for run in (one, four):
        # Same batches (rows and flips): the same losses, step by step.
        np.testing.assert_allclose(run["stream"]["loss"], run["device"]["loss"], rtol=1e-6)
        assert run["stream"]["params"] == pytest.approx(run["device"]["params"], rel=1e-6)
        assert len(set(run["device"]["loss"])) == 4  # four different steps
    # And the batch a step sees does not depend on the number of devices.
    np.testing.assert_allclose(four["stream"]["loss"], one["stream"]["loss"], rtol=1e-4)
