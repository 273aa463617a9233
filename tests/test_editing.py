"""Inpainting, editing and interpolation inside the samplers, driven by analytic Gaussian scores.

For Gaussian data the answers are closed forms: the conditional law of the
masked-out pixels given the kept ones, the probability-flow map that SDEdit
and the ODE encoder follow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.core.errors import UserError
from jaxdiff.diffusion.sde import VESDE, VPSDE
from jaxdiff.editing.controlled import slerp
from jaxdiff.sampling import (
    SAMPLERS,
    Control,
    check_control,
    create_sampler,
    probability_flow_encode,
    repaint_schedule,
)
from tests.test_samplers import MU, S, analytic_score, sampling_config

from .conftest import RUN_OPTIMIZED

SDES = {"ve": VESDE(), "vp": VPSDE()}
EDM_CHURN = dict(sampler="edm", s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)


def test_repaint_schedule_moves_are_continuous_and_count_the_resampled_steps():
    moves = repaint_schedule(num_steps=7, resampled=6, resample_steps=3, jump_length=4)
    # Each move starts where the last ended, from state 0 to the last state.
    assert moves[0, 0] == 0 and moves[-1, 1] == 7
    np.testing.assert_array_equal(moves[1:, 0], moves[:-1, 1])
    down = moves[moves[:, 1] > moves[:, 0]]
    up = moves[moves[:, 1] < moves[:, 0]]
    assert np.all(down[:, 1] - down[:, 0] == 1)
    # Blocks 0-4 and 4-6 run 3 times each (2 jumps back to their start), step 6-7 once.
    assert len(down) == 6 * 3 + 1
    assert sorted(map(tuple, up)) == [(4, 0), (4, 0), (6, 4), (6, 4)]
    plain = repaint_schedule(num_steps=5, resampled=5, resample_steps=1, jump_length=3)
    np.testing.assert_array_equal(plain, [[i, i + 1] for i in range(5)])


# Four correlated pixels (a 2x2 image) with the first row kept: the fill's law is the
# Gaussian conditional. Correlations 0.3-0.6, the kept pixels 1 and 0.5 std above their mean.
MEAN = np.array([0.5, 0.2, -0.1, 0.3])
COVARIANCE = 0.04 * np.array(
    [[1, 0.6, 0.5, 0.3], [0.6, 1, 0.4, 0.5], [0.5, 0.4, 1, 0.6], [0.3, 0.5, 0.6, 1]]
)
KEEP = np.array([1.0, 1.0, 0.0, 0.0])
KEPT_VALUES = MEAN[:2] + np.array([0.2, 0.1])


def gaussian_image_score(sde):
    """The score of the perturbed N(MEAN, COVARIANCE) images, by eigendecomposition."""
    eigenvalues, vectors = np.linalg.eigh(COVARIANCE)
    lam, q, mean = (jnp.asarray(v, jnp.float32) for v in (eigenvalues, vectors, MEAN))

    def score_fn(x, t):
        alpha, std = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
        centred = x.reshape(len(x), 4) - alpha * mean
        return -(((centred @ q) / (alpha**2 * lam + std**2)) @ q.T).reshape(x.shape)

    return score_fn


def conditional_law():
    k, u = KEEP == 1, KEEP == 0
    gain = COVARIANCE[np.ix_(u, k)] @ np.linalg.inv(COVARIANCE[np.ix_(k, k)])
    mean = MEAN[u] + gain @ (KEPT_VALUES - MEAN[k])
    return mean, COVARIANCE[np.ix_(u, u)] - gain @ COVARIANCE[np.ix_(k, u)]


def inpaint_gaussian(sde, overrides, resample_steps, num=4000):
    shape = (num, 2, 2, 1)
    source = np.zeros(4)
    source[:2] = KEPT_VALUES
    control = Control(
        source=jnp.broadcast_to(jnp.asarray(source, jnp.float32).reshape(1, 2, 2, 1), shape),
        mask=jnp.asarray(KEEP, jnp.float32).reshape(1, 2, 2, 1),
        resample_steps=resample_steps,
    )
    sampler = create_sampler(sampling_config(**overrides))
    draw = jax.jit(
        lambda key: sampler(key, gaussian_image_score(sde), sde, shape, control=control),
        compiler_options=RUN_OPTIMIZED,
    )
    filled = np.asarray(draw(jax.random.key(0))).reshape(num, 4)[:, KEEP == 0]
    return filled.mean(0), np.cov(filled.T)


@pytest.mark.slow  # 4,000 draws with RePaint's resampling, ~20 s each: not the fast tier's
@pytest.mark.parametrize(
    "sde_name, overrides",
    [
        ("ve", EDM_CHURN),
        ("vp", EDM_CHURN),
        ("ve", dict(sampler="ddim", eta=1.0)),
        ("vp", dict(sampler="euler_maruyama", num_steps=100)),
    ],
)
def test_inpainting_a_gaussian_gives_its_conditional_law(sde_name, overrides):
    """With RePaint resampling the fill's mean and covariance are the closed-form conditional's.

    Without resampling the replacement method is biased toward the unconditional mean
    (the kept pixels' noise is drawn apart from the fill's); resampling must cut that
    bias at least in half. Not conditioning at all would miss the mean by (0.10, 0.05).
    """
    sde = SDES[sde_name]
    mean, covariance = conditional_law()
    plain_mean, _ = inpaint_gaussian(sde, overrides, resample_steps=1)
    resampled_mean, resampled_covariance = inpaint_gaussian(sde, overrides, resample_steps=10)
    np.testing.assert_allclose(resampled_mean, mean, atol=0.025)
    np.testing.assert_allclose(resampled_covariance, covariance, atol=0.013)
    assert np.abs(resampled_mean - mean).max() < 0.5 * np.abs(plain_mean - mean).max()


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("strength", [0.3, 0.6])
def test_sdedit_follows_the_probability_flow_from_the_noised_source(sde_name, strength):
    """edm without churn maps x~_T = c + sigma_T z to MU + (x~_T - MU) S / sqrt(S^2 + sigma_T^2)."""
    sde = SDES[sde_name]
    shape = (2000, 4, 4, 1)
    c = 0.9
    # 40 steps: 18 Karras levels over VP's sigma range leave ~7% error in the std (the
    # discretisation; tests/test_samplers.py pins the update rule itself).
    sampler = create_sampler(sampling_config(sampler="edm", num_steps=40))
    control = Control(source=jnp.full(shape, c), start_time=strength)
    draw = jax.jit(
        lambda key: sampler(key, analytic_score(sde), sde, shape, control=control),
        compiler_options=RUN_OPTIMIZED,
    )
    out = np.asarray(draw(jax.random.key(1)))
    sigma = float(sde.noise_level(jnp.float32(strength)))
    gain = S / np.sqrt(S**2 + sigma**2)
    np.testing.assert_allclose(out.mean(), MU + (c - MU) * gain, atol=0.01)
    np.testing.assert_allclose(out.std(), sigma * gain, rtol=0.05)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_sdedit_returns_the_input_as_the_strength_goes_to_zero(sde_name):
    """What is left of the input's change is the noise of level sigma(strength) it was given."""
    sde = SDES[sde_name]
    shape = (64, 4, 4, 1)
    source = jax.random.uniform(jax.random.key(0), shape)
    sampler = create_sampler(sampling_config(**EDM_CHURN, num_steps=18))
    errors = []
    for strength in (0.3, 0.03, 2e-3):
        control = Control(source=source, start_time=strength)
        out = sampler(jax.random.key(1), analytic_score(sde), sde, shape, control=control)
        errors.append(float(np.sqrt(np.mean((np.asarray(out) - np.asarray(source)) ** 2))))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1.5 * float(sde.noise_level(jnp.float32(2e-3)))


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_ode_encoding_then_decoding_returns_the_input(sde_name):
    """probability_flow_encode gives the closed-form flow map of the data, x~(sigma_max) =
    MU + (x0 - MU) sqrt(S^2 + sigma_max^2) / sqrt(S^2 + sigma_min^2), and edm without churn
    takes it back to x0 denoised at sigma_min (its last step), MU + (x0 - MU) S^2 /
    (S^2 + sigma_min^2)."""
    sde = SDES[sde_name]
    settings = dict(num_steps=60, eps=1e-3, noise_schedule="karras", rho=7.0)
    shape = (16, 4, 4, 1)
    x0 = MU + S * jax.random.normal(jax.random.key(0), shape)
    score_fn = analytic_score(sde)
    z = probability_flow_encode(score_fn, sde, x0, **settings)
    sigma_max = float(sde.noise_level(jnp.float32(1.0)))
    sigma_min = float(sde.noise_level(jnp.float32(1e-3)))
    top = MU + (x0 - MU) * np.sqrt(S**2 + sigma_max**2) / np.sqrt(S**2 + sigma_min**2)
    alpha = float(sde.mean_coeff(jnp.float32(1.0)))
    np.testing.assert_allclose(np.asarray(z) * sde.prior_std / alpha, top, rtol=0.015)
    sampler = create_sampler(sampling_config(sampler="edm", **settings))
    decoded = sampler(jax.random.key(5), score_fn, sde, shape, control=Control(noise=z))
    denoised = MU + (x0 - MU) * S**2 / (S**2 + sigma_min**2)
    np.testing.assert_allclose(np.asarray(decoded), np.asarray(denoised), atol=2e-3)


def test_slerp_keeps_the_ends_and_the_norm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 500)), rng.normal(size=(3, 500))
    b *= np.linalg.norm(a, axis=1, keepdims=True) / np.linalg.norm(b, axis=1, keepdims=True)
    path = slerp(a, b, np.linspace(0, 1, 5))
    np.testing.assert_allclose(path[:, 0], a, atol=1e-5)
    np.testing.assert_allclose(path[:, -1], b, atol=1e-5)
    # Between vectors of one norm, the arc keeps it; the straight line would not.
    np.testing.assert_allclose(
        np.linalg.norm(path, axis=2), np.linalg.norm(a, axis=1)[:, None] * np.ones(5), rtol=1e-4
    )
    e1, e2 = np.eye(2)[None, 0], np.eye(2)[None, 1]
    np.testing.assert_allclose(slerp(e1, e2, [0.5])[0, 0], [0.5**0.5, 0.5**0.5], atol=1e-6)


@pytest.mark.parametrize(
    "overrides, settings, message",
    [
        (dict(sampler="dpm_solver++"), dict(masked=True), "cannot inpaint"),
        (dict(sampler="edm"), dict(masked=False, start_time=1.5), "editing.strength"),
        (dict(sampler="edm"), dict(masked=False, start_time=1e-4), "editing.strength"),
        (dict(sampler="edm"), dict(masked=False, resample_steps=3), "inpainting only"),
        (dict(sampler="edm"), dict(masked=True, resample_steps=0), "resample_steps"),
    ],
)
def test_impossible_controls_are_refused(overrides, settings, message):
    with pytest.raises(UserError, match=message):
        check_control(sampling_config(**overrides), **settings)
    # dpm_solver++ can still edit without a mask.
    check_control(sampling_config(sampler="dpm_solver++"), masked=False, start_time=0.5)


def test_a_sampler_without_control_is_refused_for_editing():
    @SAMPLERS.register(
        "no_control_test", default_steps=2, nfe=lambda c: 1, state_times=None, no_inpainting=""
    )
    def plain(key, score_fn, sde, shape, *, num_steps, eps, snapshots=0):
        return sde.prior_sample(key, shape)

    try:
        with pytest.raises(UserError, match="takes no control"):
            check_control(sampling_config(sampler="no_control_test"), masked=False)
    finally:
        SAMPLERS.unregister("no_control_test")
