"""Denoising score matching against its closed form for Gaussian data."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate

from jaxdiff.losses import dsm_loss
from jaxdiff.sde import VESDE, VPSDE

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
