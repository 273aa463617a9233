"""Closed forms of the noise processes, checked against direct integration."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import integrate

from jaxdiff.core.errors import UserError
from jaxdiff.diffusion.sde import VESDE, VPSDE, SubVPSDE, create_sde

TIMES = np.array([1e-3, 0.1, 0.37, 0.8, 1.0])


def moments_by_ode(sde, t_end):
    """Integrates d mean/dt = -beta/2 * mean (VP family; 0 for VE) and
    d var/dt = -beta * var + g(t)^2 from mean=1, var=0: the kernel's alpha and std^2."""

    def rhs(t, y):
        beta = float(sde.beta(t)) if hasattr(sde, "beta") else 0.0
        g2 = float(sde.diffusion(jnp.asarray(t))) ** 2
        return [-0.5 * beta * y[0], -beta * y[1] + g2]

    sol = integrate.solve_ivp(rhs, (0.0, t_end), [1.0, 0.0], rtol=1e-10, atol=1e-12)
    return sol.y[0, -1], math.sqrt(sol.y[1, -1])


def test_ve_marginal_std_is_the_seed_closed_form():
    sde = VESDE(sigma=25.0)
    expected = np.sqrt((25.0 ** (2 * TIMES) - 1) / (2 * np.log(25.0)))
    np.testing.assert_allclose(sde.marginal_std(jnp.asarray(TIMES)), expected, rtol=1e-5)
    np.testing.assert_allclose(sde.diffusion(jnp.asarray(TIMES)), 25.0**TIMES, rtol=1e-5)
    assert sde.prior_std == pytest.approx(math.sqrt(624 / (2 * math.log(25))))


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_marginals_solve_the_moment_equations(sde):
    for t in TIMES:
        alpha, std = moments_by_ode(sde, t)
        assert float(sde.mean_coeff(jnp.asarray(t))) == pytest.approx(alpha, rel=1e-4)
        assert float(sde.marginal_std(jnp.asarray(t))) == pytest.approx(std, rel=1e-4)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_prior_matches_the_marginal_at_t1(sde):
    # VP/sub-VP forget the data by t=1 (alpha ~ 0.007); VE keeps the mean, but its
    # std(1) ~ 9.9 dwarfs data in [0, 1].
    assert float(sde.mean_coeff(jnp.ones(()))) < (1.01 if isinstance(sde, VESDE) else 0.01)
    assert float(sde.marginal_std(jnp.ones(()))) == pytest.approx(sde.prior_std, rel=1e-4)
    x = sde.prior_sample(jax.random.key(0), (20_000, 8))
    assert float(jnp.std(x)) == pytest.approx(sde.prior_std, rel=0.01)
    assert abs(float(jnp.mean(x))) < 0.01 * sde.prior_std


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_transition_kernel_composes_marginals(sde):
    s, t = jnp.asarray([0.05, 0.3, 0.6]), jnp.asarray([0.1, 0.7, 1.0])
    a, v = sde.transition(s, t)
    np.testing.assert_allclose(a * sde.mean_coeff(s), sde.mean_coeff(t), rtol=1e-5)
    np.testing.assert_allclose(
        a**2 * sde.marginal_std(s) ** 2 + v, sde.marginal_std(t) ** 2, rtol=1e-5
    )
    assert bool(jnp.all(v > 0))


def test_reverse_drifts():
    sde = VPSDE()
    x, score, t = jnp.ones((2, 3)), jnp.full((2, 3), 2.0), jnp.asarray([0.5, 0.5])
    beta = 0.1 + 0.5 * 19.9
    np.testing.assert_allclose(sde.reverse_drift(x, t, score), -0.5 * beta - beta * 2.0, rtol=1e-5)
    np.testing.assert_allclose(
        sde.probability_flow_drift(x, t, score), -0.5 * beta - 0.5 * beta * 2.0, rtol=1e-5
    )


def test_create_sde_by_name():
    config = ml_collections.ConfigDict(dict(name="ve", sigma=10.0, beta_min=0.1, beta_max=20.0))
    assert create_sde(config) == VESDE(sigma=10.0)
    config.name = "subvp"
    assert isinstance(create_sde(config), SubVPSDE)
    config.name = "vx"
    with pytest.raises(UserError, match=r"unknown sde.name 've?x'.*\['subvp', 've', 'vp'\]"):
        create_sde(config)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_noise_level_maps_invert_each_other_and_the_forward_maps(sde):
    t = jnp.asarray(np.linspace(1e-4, 1.0, 200), jnp.float32)
    sigma = sde.noise_level(t)
    # sigma = std / alpha, from the forward maps.
    np.testing.assert_allclose(sigma, sde.marginal_std(t) / sde.mean_coeff(t), rtol=1e-5)
    assert np.all(np.diff(np.asarray(sigma)) > 0)  # Increasing, so invertible.
    np.testing.assert_allclose(sde.time_at_noise_level(sigma), t, rtol=1e-4, atol=1e-7)
    levels = jnp.asarray(np.geomspace(1e-3, float(sigma[-1]), 50), jnp.float32)
    np.testing.assert_allclose(sde.noise_level(sde.time_at_noise_level(levels)), levels, rtol=1e-4)
    assert float(sde.time_at_noise_level(jnp.zeros(()))) == 0.0


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_denoise_is_the_gaussian_posterior_mean(sde):
    # x_0 ~ N(m, s^2): E[x_0 | x_t] = m + alpha s^2 (x_t - alpha m) / (alpha^2 s^2 + std^2).
    m, s = 0.3, 0.4
    t = jnp.asarray([0.01, 0.2, 0.7])
    x = jax.random.normal(jax.random.key(0), (3, 5))
    alpha, std = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
    var = alpha**2 * s**2 + std**2
    score = -(x - alpha * m) / var
    expected = m + alpha * s**2 * (x - alpha * m) / var
    np.testing.assert_allclose(sde.denoise(x, t, score), expected, rtol=1e-5, atol=1e-6)
