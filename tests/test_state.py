"""Optimizer pieces: the learning-rate schedule, weight-decay mask, mixed precision."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxdiff.configs import mnist

from jaxdiff.core.errors import UserError
from jaxdiff.data.datasets import dataset_info
from jaxdiff.models import create_model
from jaxdiff.training.state import create_learning_rate_schedule, create_optimizer


def training_config(**overrides):
    config = mnist.get_config().training
    config.update(overrides)
    return config


def test_warmup_then_cosine_schedule_closed_form():
    config = training_config(
        learning_rate=1e-3, warmup_steps=100, num_steps=1100, end_lr_factor=0.1
    )
    schedule = create_learning_rate_schedule(config)
    assert float(schedule(0)) == 0.0
    assert float(schedule(50)) == pytest.approx(5e-4)
    assert float(schedule(100)) == pytest.approx(1e-3)
    for step in (350, 600, 1100):
        progress = (step - 100) / 1000
        expected = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)


def test_constant_schedule_and_unknown_name():
    schedule = create_learning_rate_schedule(
        training_config(schedule="constant", learning_rate=2e-3, warmup_steps=10)
    )
    assert float(schedule(5)) == pytest.approx(1e-3)
    assert float(schedule(10_000)) == pytest.approx(2e-3)
    with pytest.raises(UserError, match=r"unknown training.schedule 'linear'"):
        create_learning_rate_schedule(training_config(schedule="linear"))


def test_weight_decay_touches_kernels_only():
    config = training_config(weight_decay=0.5, grad_clip=0.0, warmup_steps=0, schedule="constant")
    tx = create_optimizer(config)
    params = {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    # AdamW's decoupled decay: -lr * wd * param, for matrices only.
    np.testing.assert_allclose(updates["kernel"], -config.learning_rate * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(updates["bias"], 0.0)


@pytest.mark.slow  # over 8 s on 2 cores: the full suite's, not the fast tier's
def test_half_precision_keeps_float32_params_and_tracks_float32_output():
    config = mnist.get_config()
    image_shape = dataset_info("mnist").image_shape
    full = create_model(config.model, image_shape)
    half = create_model(config.model, image_shape, jnp.bfloat16)
    x = jax.random.uniform(jax.random.key(0), (4, *image_shape))
    t = jnp.asarray([0.01, 0.1, 0.5, 1.0])
    params = jax.jit(full.init)(jax.random.key(1), x, t)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    out_full = jax.jit(full.apply)({"params": params}, x, t)
    out_half = jax.jit(half.apply)({"params": params}, x, t)
    assert out_half.dtype == jnp.float32
    relative = float(jnp.linalg.norm(out_half - out_full) / jnp.linalg.norm(out_full))
    assert 0 < relative < 0.05  # bf16 rounding, not a different network
