"""Every sampler, driven by the analytic score of Gaussian data, must reproduce that data.

For x_0 ~ N(MU, S^2 I) the perturbed marginal is N(alpha MU, (alpha^2 S^2 + std^2) I),
so its score is known exactly: this tests the samplers, not a network.
"""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdiff.core.errors import UserError
from jaxdiff.diffusion.conditioning import guided_score_fn
from jaxdiff.diffusion.sde import VESDE, VPSDE, SubVPSDE
from jaxdiff.sampling import create_sampler, noise_levels, num_function_evals

from .conftest import RUN_OPTIMIZED

MU, S = 0.5, 0.2
# Tolerances: 3% of the mean, 5% of the std. The VE prior N(0, std(1)^2) ignores
# the data mean, which alone costs MU * S / std(1) ~ 0.01 (see the ODE result).
MEAN_TOL, STD_TOL = 0.015, 0.01

SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}
SAMPLERS = {
    "euler_maruyama": dict(sampler="euler_maruyama", num_steps=500),
    "pc_reverse_diffusion": dict(sampler="pc", predictor="reverse_diffusion", num_steps=500),
    "pc_euler_maruyama": dict(sampler="pc", predictor="euler_maruyama", num_steps=500),
    "ode": dict(sampler="ode", num_steps=100),
}


def sampling_config(**overrides):
    config = ml_collections.ConfigDict(
        dict(
            sampler="euler_maruyama",
            num_steps=500,
            eps=1e-3,
            predictor="reverse_diffusion",
            corrector_steps=1,
            snr=0.16,
            noise_schedule="karras",
            rho=7.0,
            eta=0.0,
            s_churn=0.0,
            s_tmin=0.0,
            s_tmax=float("inf"),
            s_noise=1.0,
        )
    )
    config.update(overrides)
    return config


def analytic_score(sde):
    def score_fn(x, t):
        a = sde.mean_coeff(t)[:, None, None, None]
        var = a**2 * S**2 + sde.marginal_std(t)[:, None, None, None] ** 2
        return -(x - a * MU) / var

    return score_fn


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("sampler_name", sorted(SAMPLERS))
def test_sampler_reproduces_gaussian_data(sde_name, sampler_name):
    sde = SDES[sde_name]
    sampler = create_sampler(sampling_config(**SAMPLERS[sampler_name]))
    # 784 dims as in MNIST: the corrector's step size uses per-example norms.
    x = jax.jit(
        lambda key: sampler(key, analytic_score(sde), sde, (256, 28, 28, 1)),
        compiler_options=RUN_OPTIMIZED,
    )(jax.random.key(0))
    assert abs(float(x.mean()) - MU) < MEAN_TOL
    assert abs(float(x.std()) - S) < STD_TOL


def test_probability_flow_ode_is_deterministic_given_the_prior_draw():
    sde = SDES["vp"]
    sampler = create_sampler(sampling_config(sampler="ode", num_steps=20))
    run = jax.jit(lambda key: sampler(key, analytic_score(sde), sde, (4, 2, 2, 1)))
    assert (run(jax.random.key(3)) == run(jax.random.key(3))).all()
    assert not (run(jax.random.key(3)) == run(jax.random.key(4))).all()


@pytest.mark.parametrize(
    "overrides, nfe",
    [
        (dict(sampler="euler_maruyama", num_steps=7), 7),
        (dict(sampler="pc", num_steps=5, corrector_steps=2), 15),
        (dict(sampler="ode", num_steps=5), 11),
        (dict(sampler="edm", num_steps=6), 11),
        (dict(sampler="edm", num_steps=6, s_churn=5.0), 11),
        (dict(sampler="dpm_solver++", num_steps=6), 6),
        (dict(sampler="ddim", num_steps=6, eta=1.0), 6),
    ],
)
def test_function_evaluation_counts(overrides, nfe):
    # Counted by running the scan as a Python loop: each network call is one call here.
    config = sampling_config(**overrides)
    calls = []
    sde = SDES["vp"]

    def counting_score(x, t):
        calls.append(1)
        return analytic_score(sde)(x, t)

    with jax.disable_jit():
        create_sampler(config)(jax.random.key(0), counting_score, sde, (2, 2, 2, 1))
    assert len(calls) == num_function_evals(config) == nfe


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(sampler="ddpm"), r"unknown sampling.sampler 'ddpm'.*ddim, dpm_solver\+\+, edm"),
        (dict(sampler="edm", noise_schedule="cosine"), r"unknown sampling.noise_schedule 'cosine'"),
        (dict(sampler="ddim", eta=1.5), r"sampling.eta must be in \[0, 1\]"),
        (dict(sampler="edm", s_churn=-1.0), r"s_churn and s_noise must be >= 0"),
        (dict(sampler="pc", predictor="heun"), r"unknown sampling.predictor 'heun'"),
        (dict(num_steps=1), r"num_steps must be >= 2"),
        (dict(eps=0.0), r"eps must be in \(0, 1\)"),
    ],
)
def test_bad_sampler_settings_are_rejected(overrides, message):
    with pytest.raises(UserError, match=message):
        create_sampler(sampling_config(**overrides))


# Noise-level samplers (edm, dpm_solver++, ddim) work on x~ = x / alpha = x_0 + sigma z.
# For Gaussian data the denoiser is linear, D(x~) = MU + (x~ - MU) S^2 / (S^2 + sigma^2),
# so a deterministic sampler maps y = x~(sigma_max) - MU to y g for a number g that a
# scalar recursion of the method gives (below, in numpy), and the exact probability-flow
# ODE maps it to y S / sqrt(S^2 + sigma_max^2). Both are checked, per sample.


def gaussian_denoiser_gain(sigma):
    return S**2 / (S**2 + sigma**2)


def scalar_gain(name, sigmas):
    """g of `name` on `sigmas` (N levels, then 0) for the Gaussian: the paper's update in numpy."""
    y, previous, h_last = 1.0, None, None
    for sigma, sigma_next in itertools.pairwise(sigmas[:-1]):
        denoised = y * gaussian_denoiser_gain(sigma)  # D - MU, in units of the start's y.
        if name == "edm":  # Heun: Euler, then the average of both slopes.
            d = (y - denoised) / sigma
            y_euler = y + (sigma_next - sigma) * d
            d_next = (y_euler - y_euler * gaussian_denoiser_gain(sigma_next)) / sigma_next
            y = y + (sigma_next - sigma) * (d + d_next) / 2
        elif name == "ddim":
            y = denoised + sigma_next / sigma * (y - denoised)
        else:  # dpm_solver++ 2M: lambda = -log sigma, multistep from the second step.
            h = np.log(sigma / sigma_next)
            if previous is not None:
                r = h_last / h
                denoised, previous = (1 + 1 / (2 * r)) * denoised - previous / (2 * r), denoised
            else:
                previous = denoised
            y = sigma_next / sigma * y - np.expm1(-h) * denoised
            h_last = h
    return y * gaussian_denoiser_gain(sigmas[-2])  # The last step: x~ = D.


def noise_level_run(sde, name, num_steps, schedule="karras", shape=(64, 4, 4, 1), key=1):
    """(samples, y at sigma_max, the noise levels) of a deterministic run on Gaussian data."""
    config = sampling_config(
        sampler=name, num_steps=num_steps, noise_schedule=schedule, rho=7.0, eta=0.0, **CHURN_OFF
    )
    sampler = create_sampler(config)
    key = jax.random.key(key)
    x = jax.jit(lambda k: sampler(k, analytic_score(sde), sde, shape))(key)
    # The documented prior draw, divided by alpha(1).
    prior = sde.prior_sample(key, shape) / sde.mean_coeff(jnp.float32(1.0))
    return np.asarray(x), np.asarray(prior) - MU, noise_levels(sde, num_steps, 1e-3, schedule)


CHURN_OFF = dict(s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0)
NOISE_LEVEL_SAMPLERS = ("ddim", "dpm_solver++", "edm")


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("name", NOISE_LEVEL_SAMPLERS)
@pytest.mark.parametrize("schedule", ["karras", "log_snr"])
def test_noise_level_samplers_follow_their_update_rule(sde_name, name, schedule):
    sde = SDES[sde_name]
    x, y, sigmas = noise_level_run(sde, name, 12, schedule)
    gain = scalar_gain(name, sigmas)
    np.testing.assert_allclose(x, MU + y * gain, rtol=1e-4, atol=1e-4 * np.abs(y).max() * gain)


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("name, order", [("edm", 2), ("dpm_solver++", 2), ("ddim", 1)])
def test_error_against_the_exact_flow_falls_with_the_order(sde_name, name, order):
    sde = SDES[sde_name]
    errors = []
    for num_steps in (20, 40, 80):
        x, y, sigmas = noise_level_run(sde, name, num_steps)
        # The exact flow to sigma_min, then the exact denoiser (every sampler's last step).
        exact = y * np.sqrt(S**2 + sigmas[-2] ** 2) / np.sqrt(S**2 + sigmas[0] ** 2)
        exact = MU + exact * gaussian_denoiser_gain(sigmas[-2])
        errors.append(np.sqrt(np.mean((x - exact) ** 2)))
    slopes = -np.diff(np.log2(errors))
    assert np.all(np.abs(slopes - order) < 0.35), (errors, slopes)
    assert errors[-1] < (0.01 if order == 2 else 0.05) * S


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize(
    "overrides, std_tol",
    [
        # Second order at 35 and 20 NFE. On this toy, EDM's 18 Karras steps over the VP
        # processes' sigma range (152 down to 0.01 or 1e-4) leave up to 11% of
        # discretisation error in the std (the exact value is pinned by the update-rule
        # test above); DPM-Solver++ on uniform log-SNR steps leaves under 3%.
        (dict(sampler="edm", num_steps=18), 0.12),
        (dict(sampler="dpm_solver++", num_steps=20, noise_schedule="log_snr"), 0.04),
        (dict(sampler="edm", num_steps=30, s_churn=10.0), 0.1),
        (dict(sampler="ddim", num_steps=200, eta=1.0), 0.06),
    ],
    ids=["edm_35nfe", "dpm_20nfe", "edm_churn", "ddim_eta1"],
)
def test_noise_level_samplers_reproduce_gaussian_data(sde_name, overrides, std_tol):
    sde = SDES[sde_name]
    config = sampling_config(**{**NOISE_DEFAULTS, **overrides})
    sampler = create_sampler(config)
    x = jax.jit(
        lambda key: sampler(key, analytic_score(sde), sde, (256, 28, 28, 1)),
        compiler_options=RUN_OPTIMIZED,
    )(jax.random.key(0))
    assert abs(float(x.mean()) - MU) < MEAN_TOL
    assert abs(float(x.std()) / S - 1) < std_tol


NOISE_DEFAULTS = dict(noise_schedule="karras", rho=7.0, eta=0.0, **CHURN_OFF)


@pytest.mark.parametrize("name", ["edm", "dpm_solver++", "ddim", "ode"])
def test_guided_gaussian_scores_land_on_the_extrapolated_mean(name):
    # Class-conditional Gaussians N(mu_c, S^2) with the null class N(mu_null, S^2): the
    # guided score (1 + w) s_c - w s_null is that of N((1 + w) mu_c - w mu_null, S^2).
    # VP: its prior is the data's marginal at t = 1 whatever the mean (VE's would cost
    # mean * S / std(1) = 0.018 here).
    sde, w, means = SDES["vp"], 2.0, jnp.asarray([0.6, 0.3, 0.45])  # classes 0, 1; null 2.

    def score_given_labels(x, t, labels):
        a = sde.mean_coeff(t)[:, None, None, None]
        var = a**2 * S**2 + sde.marginal_std(t)[:, None, None, None] ** 2
        return -(x - a * means[labels][:, None, None, None]) / var

    labels = jnp.repeat(jnp.asarray([0, 1]), 128)
    score_fn = guided_score_fn(score_given_labels, labels, 2, w)
    config = sampling_config(sampler=name, num_steps=20, **NOISE_DEFAULTS)
    sampler = create_sampler(config)
    x = jax.jit(lambda key: sampler(key, score_fn, sde, (256, 8, 8, 1)))(jax.random.key(0))
    for c in (0, 1):
        expected = (1 + w) * float(means[c]) - w * float(means[2])
        assert abs(float(x[labels == c].mean()) - expected) < MEAN_TOL


def test_the_ode_sampler_ends_denoised():
    # Without the last denoising step the Gaussian's std would stay sqrt(S^2 + std(eps)^2).
    sde = SDES["ve"]
    eps = 0.1  # std(eps) = 0.19, about S: a leftover of noise would show plainly.
    sampler = create_sampler(sampling_config(sampler="ode", num_steps=100, eps=eps))
    x = jax.jit(
        lambda key: sampler(key, analytic_score(sde), sde, (256, 28, 28, 1)),
        compiler_options=RUN_OPTIMIZED,
    )(jax.random.key(0))
    std_eps = float(sde.marginal_std(jnp.float32(eps)))
    # The denoised estimate E[x_0 | x_eps] has std S^2 / sqrt(S^2 + std(eps)^2), below S.
    expected = S**2 / np.sqrt(S**2 + std_eps**2)
    assert abs(float(x.std()) - expected) < 0.02 * expected


@pytest.mark.parametrize(
    "sampler, nfe", [("euler_maruyama", 500), ("pc", 1000), ("ode", 101), ("edm", 35), ("ddim", 35)]
)
def test_num_steps_zero_is_each_samplers_default(sampler, nfe):
    # Choosing a sampler by name alone gives its usual settings (the original project's 500 for EM).
    assert num_function_evals(sampling_config(sampler=sampler, num_steps=0)) == nfe
