"""Denoising trajectories: sampler snapshots, and the strip and GIF `--mode=sample` writes."""

import jax
import numpy as np
import pytest

from jaxdiff.errors import UserError
from jaxdiff.samplers import create_sampler, snapshot_states, state_times
from jaxdiff.sde import VESDE, VPSDE

from .test_samplers import analytic_score, sampling_config

SHAPE = (3, 4, 4, 1)
SAMPLERS = {
    "euler_maruyama": dict(sampler="euler_maruyama"),
    "pc": dict(sampler="pc", corrector_steps=1),
    "ode": dict(sampler="ode"),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_snapshots_run_from_the_prior_draw_to_the_sample(name):
    sde = VESDE()  # Prior std 50: the first snapshot is unmistakably the prior draw.
    config = sampling_config(num_steps=9, **SAMPLERS[name])
    plain = create_sampler(config)
    recording = create_sampler(config, snapshots=4)
    key = jax.random.key(7)
    x = jax.jit(lambda k: plain(k, analytic_score(sde), sde, SHAPE))(key)
    final, trajectory = jax.jit(lambda k: recording(k, analytic_score(sde), sde, SHAPE))(key)
    assert trajectory.shape == (4, *SHAPE)
    np.testing.assert_array_equal(final, x)
    np.testing.assert_array_equal(trajectory[-1], x)
    # The prior draw, with the key the sampler uses for it.
    prior_key = key if name == "ode" else jax.random.split(key)[0]
    prior = jax.jit(lambda k: sde.prior_sample(k, SHAPE))(prior_key)
    np.testing.assert_array_equal(trajectory[0], prior)


def test_middle_snapshots_are_the_states_after_those_steps():
    # The ODE is deterministic given the prior: run it for 3 of 9 steps by hand.
    sde = VPSDE()
    score = analytic_score(sde)
    config = sampling_config(sampler="ode", num_steps=9)
    _, trajectory = jax.jit(lambda k: create_sampler(config, snapshots=4)(k, score, sde, SHAPE))(
        jax.random.key(1)
    )
    ts = np.linspace(1.0, config.eps, 10)
    x = sde.prior_sample(jax.random.key(1), SHAPE)
    for i in range(3):
        t, s = ts[i], ts[i + 1]

        def v(x, t):
            tb = np.full((SHAPE[0],), t, np.float32)
            return sde.probability_flow_drift(x, tb, score(x, tb))

        d1 = v(x, t)
        d2 = v(x + (s - t) * d1, s)
        x = x + 0.5 * (s - t) * (d1 + d2)
    np.testing.assert_allclose(trajectory[1], x, rtol=1e-5, atol=1e-6)


def test_snapshot_spacing_and_times():
    np.testing.assert_array_equal(snapshot_states(9, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(snapshot_states(500, 10)[[0, 1, -1]], [0, 56, 500])
    np.testing.assert_array_equal(snapshot_states(3, 4), [0, 1, 2, 3])
    for n, f in ((5, 3), (7, 5), (10, 4), (1000, 10)):
        states = snapshot_states(n, f)
        assert len(np.unique(states)) == f and states[0] == 0 and states[-1] == n
        assert np.ptp(np.diff(states)) <= 1  # Even spacing.
    em = state_times(sampling_config(num_steps=5, eps=0.2))
    np.testing.assert_allclose(em, [1.0, 0.8, 0.6, 0.4, 0.2, 0.0], atol=1e-12)
    pc = state_times(sampling_config(sampler="pc", num_steps=5, eps=0.2))
    np.testing.assert_allclose(pc, [1.0, 0.8, 0.6, 0.4, 0.2, 0.0], atol=1e-12)
    ode = state_times(sampling_config(sampler="ode", num_steps=4, eps=0.2))
    np.testing.assert_allclose(ode, [1.0, 0.8, 0.6, 0.4, 0.2], atol=1e-12)


@pytest.mark.parametrize("frames", [1, 12])
def test_bad_frame_counts_are_rejected(frames):
    with pytest.raises(UserError, match=r"sampling.trajectory_frames must be in \[2, .* = 11\]"):
        create_sampler(sampling_config(num_steps=10), snapshots=frames)
