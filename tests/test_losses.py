"""Denoising score matching against its closed form for Gaussian data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from jaxdiff.diffusion.losses import (
    LossRecipe,
    draw_training_noise,
    dsm_loss,
    dsm_loss_given_noise,
    loss_weights,
)
from jaxdiff.diffusion.sde import VESDE, VPSDE

MU, S, EPS = 0.5, 0.2, 1e-5


def gaussian_score(sde, scale=1.0):
    """Exact score of p_t when x_0 ~ N(MU, S^2 I), optionally scaled (a wrong model)."""

    def score_fn(x, t):
        a = sde.mean_coeff(t)[:, None]
        var = a**2 * S**2 + sde.marginal_std(t)[:, None] ** 2
        return -scale * (x - a * MU) / var

    return score_fn


def expected_exact_loss(sde, dim):
    """With the true score, std * score + z has per-dim variance a^2 S^2 / (a^2 S^2 + std^2)."""

    def per_dim(t):
        a, std = float(sde.mean_coeff(jnp.asarray(t))), float(sde.marginal_std(jnp.asarray(t)))
        return a**2 * S**2 / (a**2 * S**2 + std**2)

    return dim * integrate.quad(per_dim, EPS, 1.0, limit=200)[0] / (1.0 - EPS)


def test_dsm_loss_of_the_exact_score_matches_closed_form():
    dim = 64
    x0 = MU + S * jax.random.normal(jax.random.key(0), (50_000, dim))
    for sde in (VESDE(), VPSDE()):
        loss = float(dsm_loss(gaussian_score(sde), sde, x0, jax.random.key(1), EPS))
        np.testing.assert_allclose(loss, expected_exact_loss(sde, dim), rtol=0.03)


def test_exact_score_minimises_the_loss():
    sde = VESDE()
    x0 = MU + S * jax.random.normal(jax.random.key(0), (20_000, 16))
    key = jax.random.key(2)
    losses = {
        scale: float(dsm_loss(gaussian_score(sde, scale), sde, x0, key, EPS))
        for scale in (0.8, 1.0, 1.25)
    }
    assert losses[1.0] < losses[0.8] and losses[1.0] < losses[1.25]


# --- the training recipe: noise distribution and weighting ----------------------------------


def recipe(**fields):
    return LossRecipe(eps=EPS, **fields)


def exact_weighted_loss(sde, dim, r: LossRecipe) -> float:
    """E_t[w(t) dim a^2 S^2 / (a^2 S^2 + std^2)] under the recipe's law of t, by quadrature."""

    def term(t):
        t = jnp.asarray(t, jnp.float32)[None]
        a, std = float(sde.mean_coeff(t)[0]), float(sde.marginal_std(t)[0])
        w = loss_weights(sde, t, r)
        return (1.0 if w is None else float(w[0])) * a**2 * S**2 / (a**2 * S**2 + std**2)

    if r.noise_distribution == "uniform":
        return dim * integrate.quad(term, EPS, 1.0, limit=200)[0] / (1.0 - EPS)

    def over_n(n):  # ln sigma = p_mean + p_std n, t clipped to [eps, 1]
        sigma = jnp.exp(jnp.float32(r.p_mean + r.p_std * n))[None]
        t = float(jnp.clip(sde.time_at_noise_level(sigma), EPS, 1.0)[0])
        return term(t) * stats.norm.pdf(n)

    return dim * integrate.quad(over_n, -8.0, 8.0, limit=200)[0]


@pytest.mark.parametrize("distribution", ["uniform", "log_normal"])
@pytest.mark.parametrize("weighting", ["std2", "edm", "min_snr"])
def test_weighted_loss_of_the_exact_score_matches_its_closed_form(distribution, weighting):
    dim = 64
    x0 = MU + S * jax.random.normal(jax.random.key(0), (50_000, dim))
    r = recipe(noise_distribution=distribution, weighting=weighting)
    for sde in (VESDE(), VPSDE()):
        t, z = draw_training_noise(jax.random.key(1), x0, sde, r)
        weights = loss_weights(sde, t, r)
        loss = float(dsm_loss_given_noise(gaussian_score(sde), sde, x0, t, z, weights))
        np.testing.assert_allclose(loss, exact_weighted_loss(sde, dim, r), rtol=0.03)


def test_the_default_recipe_is_the_seeds_loss():
    x0 = MU + S * jax.random.normal(jax.random.key(0), (64, 8))
    sde, key = VESDE(), jax.random.key(3)
    t, z = draw_training_noise(key, x0, sde, recipe())
    assert loss_weights(sde, t, recipe()) is None
    loss = dsm_loss_given_noise(gaussian_score(sde, 0.9), sde, x0, t, z)
    assert loss == dsm_loss(gaussian_score(sde, 0.9), sde, x0, key, EPS)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE()], ids=["ve", "vp"])
def test_log_normal_noise_levels_follow_their_law(sde):
    r = recipe(noise_distribution="log_normal", p_mean=-1.2, p_std=1.2)
    t, _ = draw_training_noise(jax.random.key(5), jnp.zeros((200_000, 1)), sde, r)
    log_sigma = np.log(np.asarray(sde.noise_level(t), np.float64))
    # Levels beyond the SDE's range sit at its ends; in between, the CDF is N(-1.2, 1.2^2)'s.
    low, high = (float(np.log(sde.noise_level(jnp.float32(x)))) for x in (EPS, 1.0))
    grid = np.linspace(max(low, -5.0) + 1e-3, min(high, 2.5) - 1e-3, 50)
    empirical = np.searchsorted(np.sort(log_sigma), grid) / len(log_sigma)
    np.testing.assert_allclose(empirical, stats.norm.cdf(grid, -1.2, 1.2), atol=0.005)
    # A wrong law (the mean off by a tenth of the spread) is far outside that tolerance.
    assert np.abs(empirical - stats.norm.cdf(grid, -1.08, 1.2)).max() > 0.03


@pytest.mark.parametrize("sde", [VESDE(), VPSDE()], ids=["ve", "vp"])
def test_weights_are_edm_and_min_snr_as_their_papers_define_them(sde):
    t = jnp.linspace(EPS, 1.0, 101)
    a, std = sde.mean_coeff(t), sde.marginal_std(t)
    snr, sigma = a**2 / std**2, std / a
    # min-SNR-gamma on the noise prediction's error, which the residual is.
    min_snr = loss_weights(sde, t, recipe(weighting="min_snr", min_snr_gamma=5.0))
    np.testing.assert_allclose(min_snr, jnp.minimum(snr, 5.0) / snr, rtol=1e-4)
    # EDM's lambda(sigma) on the denoiser's error D - x0 = sigma * residual.
    edm = loss_weights(sde, t, recipe(weighting="edm", sigma_data=0.5))
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    np.testing.assert_allclose(edm, lam * sigma**2, rtol=1e-4)
