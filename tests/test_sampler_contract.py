"""The contract every registered sampler keeps, checked for each one in SAMPLERS.

A new sampler is checked here by registering it: its output's shape and dtype,
its network evaluations against its registered `nfe`, a clean end, the control
support it declares, and that a control starting at t = 1 is plain sampling.
Each sampler runs with the default config's settings (`configs/default.py`) on
tiny shapes and a few steps; `tests/test_samplers.py` checks their answers.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxdiff.configs import default

from jaxdiff.core.errors import UserError
from jaxdiff.diffusion.sde import VPSDE
from jaxdiff.sampling import (
    SAMPLERS,
    Control,
    check_control,
    create_sampler,
    num_function_evals,
    state_times,
)
from tests.test_samplers import MU, analytic_score

NAMES = sorted(SAMPLERS)
SHAPE = (4, 3, 3, 1)
STEPS = 4
KEY = jax.random.key(0)
# VP: its noise level at t = 0 is 0, so a state at t <= 0 is clean.
SDE = VPSDE()


def sampling_config(name: str, **overrides):
    c = default.get_config().sampling
    c.update({"sampler": name, "num_steps": STEPS, **overrides})
    return c


def takes_control(name: str) -> bool:
    return SAMPLERS.get(name).extras["control"]


@functools.cache
def plain_sample(name: str) -> np.ndarray:
    sampler = create_sampler(sampling_config(name))
    return np.asarray(jax.jit(lambda k: sampler(k, analytic_score(SDE), SDE, SHAPE))(KEY))


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_dtype(name):
    x = plain_sample(name)
    assert x.shape == SHAPE and x.dtype == np.float32 and np.isfinite(x).all()
    recording = create_sampler(sampling_config(name), snapshots=3)
    final, trajectory = jax.jit(lambda k: recording(k, analytic_score(SDE), SDE, SHAPE))(KEY)
    assert final.shape == SHAPE and final.dtype == jnp.float32
    assert trajectory.shape == (3, *SHAPE) and trajectory.dtype == jnp.float32


@pytest.mark.parametrize("name", NAMES)
def test_score_evaluations_are_the_registered_nfe(name):
    # Counted with the scan run as a Python loop: each network call is one call here.
    calls = []

    def counting_score(x, t):
        calls.append(1)
        return analytic_score(SDE)(x, t)

    config = sampling_config(name)
    with jax.disable_jit():
        create_sampler(config)(KEY, counting_score, SDE, SHAPE)
    assert len(calls) == num_function_evals(config)


def point_mass_score(sde):
    """The exact score of data that is MU alone: its denoiser gives MU at every noise level."""

    def score_fn(x, t):
        a = sde.mean_coeff(t)[:, None, None, None]
        return -(x - a * MU) / sde.marginal_std(t)[:, None, None, None] ** 2

    return score_fn


@pytest.mark.parametrize("name", NAMES)
def test_the_sample_ends_clean(name):
    config = sampling_config(name)
    times = state_times(config, SDE)
    # The last step goes to t <= 0, where VP's noise level is 0 (Euler-Maruyama's to eps - dt:
    # its sample is the mean of a step through t = 0, exact only as dt -> 0).
    assert times[-1] <= 0.0
    if times[-1] < 0.0:
        return
    # Landing on level 0 with the exact score, the sample is the data point itself, without
    # the noise of std(eps) that stopping at eps would leave.
    sampler = create_sampler(config)
    x = jax.jit(lambda k: sampler(k, point_mass_score(SDE), SDE, SHAPE))(KEY)
    leftover = float(SDE.marginal_std(jnp.float32(config.eps)))
    np.testing.assert_allclose(np.asarray(x), MU, rtol=0, atol=0.01 * leftover)


@pytest.mark.parametrize("name", NAMES)
def test_control_support_is_as_declared(name):
    config = sampling_config(name)
    if not takes_control(name):
        with pytest.raises(UserError, match="takes no control"):
            check_control(config, masked=False)
        return
    masked = not SAMPLERS.get(name).extras["no_inpainting"]
    if not masked:
        with pytest.raises(UserError, match="cannot inpaint"):
            check_control(config, masked=True)
    settings = dict(start_time=0.5, resample_steps=2 if masked else 1)
    check_control(config, masked=masked, **settings)
    source = jnp.full(SHAPE, MU)
    mask = jnp.asarray([1.0, 0.0, 1.0]).reshape(1, 1, 3, 1) if masked else None
    control = Control(source, mask=mask, **settings)
    sampler = create_sampler(config)
    x = jax.jit(lambda k: sampler(k, analytic_score(SDE), SDE, SHAPE, control=control))(KEY)
    assert x.shape == SHAPE and x.dtype == jnp.float32 and np.isfinite(x).all()
    assert not np.array_equal(np.asarray(x), plain_sample(name))


@pytest.mark.parametrize("name", NAMES)
def test_a_control_starting_at_one_is_plain_sampling(name):
    sampler = create_sampler(sampling_config(name))
    control = Control(jnp.full(SHAPE, 0.9), start_time=1.0)
    if not takes_control(name):
        with pytest.raises(ValueError, match="takes no control"):
            sampler(KEY, analytic_score(SDE), SDE, SHAPE, control=control)
        return
    started = jax.jit(lambda k: sampler(k, analytic_score(SDE), SDE, SHAPE, control=control))(KEY)
    np.testing.assert_array_equal(np.asarray(started), plain_sample(name))
