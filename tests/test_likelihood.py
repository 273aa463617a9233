"""Likelihoods through the PF-ODE, checked against Gaussian data whose every quantity is analytic.

For x_0 ~ N(M0, S0^2 I) the marginal is p_t = N(alpha M0, sig_t^2 I) with
sig_t^2 = alpha^2 S0^2 + std^2, its score is -(x - alpha M0) / sig_t^2, and the
PF-ODE flow is affine: x_1 - alpha_1 M0 = (sig_1 / sig_eps) (x - alpha_eps M0).
The method ends the flow at the SDE's prior N(0, prior_std^2 I), not at p_1
(which, for VE, still remembers the data mean), so the number it should
produce is log p_eps(x) + log prior(x_1) - log p_1(x_1): the closed form plus
that known prior mismatch. What remains is Heun's O(h^2) error.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion.likelihood import bits_per_dim, log_likelihood
from jaxdiff.diffusion.sde import VESDE, VPSDE

EPS = 1e-3
LN2 = math.log(2.0)


def _normal_logpdf(x, mean, var):
    axes = tuple(range(1, x.ndim))
    return jnp.sum(-0.5 * jnp.log(2 * jnp.pi * var) - 0.5 * (x - mean) ** 2 / var, axis=axes)


class GaussianData:
    """x_0 ~ N(m0, s0^2 I) under `sde`: analytic score, marginals and flow."""

    def __init__(self, sde, m0, s0):
        self.sde, self.m0, self.s0 = sde, m0, s0

    @classmethod
    def with_marginal_at_eps(cls, sde, mean, std):
        """The data whose p_eps is exactly N(mean, std^2 I)."""
        a, sd = sde.mean_coeff(jnp.float32(EPS)), sde.marginal_std(jnp.float32(EPS))
        return cls(sde, mean / a, jnp.sqrt(std**2 - sd**2) / a)

    def marginal(self, t):
        a, sd = self.sde.mean_coeff(t), self.sde.marginal_std(t)
        return a * self.m0, a**2 * self.s0**2 + sd**2

    def score_fn(self, x, t):
        mean, var = self.marginal(t)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return -(x - mean.reshape(shape)) / var.reshape(shape)

    def expected_log_p(self, x):
        """What the PF-ODE likelihood converges to: closed form + prior mismatch."""
        mean_eps, var_eps = self.marginal(jnp.float32(EPS))
        mean_1, var_1 = self.marginal(jnp.float32(1.0))
        z = mean_1 + jnp.sqrt(var_1 / var_eps) * (x - mean_eps)
        # The prior written out here, not jaxdiff's, so a wrong prior cannot cancel.
        prior = _normal_logpdf(z, 0.0, self.sde.prior_std**2)
        mismatch = prior - _normal_logpdf(z, mean_1, var_1)
        return _normal_logpdf(x, mean_eps, var_eps) + mismatch, z


# Heun is second order: at 200 steps the measured error of log p (D = 4) is
# 1.7e-3 nats for VE (sigma = 25) and 4.8e-3 for VP, and it falls 4x per doubling
# of num_steps (6.9e-3 / 2.0e-2 at 100 steps). 0.015 nats leaves 3x headroom.
NUM_STEPS, LOG_P_TOL = 200, 0.015
SDES = {"ve": VESDE(sigma=25.0), "vp": VPSDE()}


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_exact_trace_matches_closed_form(sde_name):
    sde = SDES[sde_name]
    data = GaussianData(sde, 0.5, 0.2)
    x = data.m0 + data.s0 * jax.random.normal(jax.random.key(0), (8, 2, 2, 1))
    log_p, z = log_likelihood(
        jax.random.key(1), data.score_fn, sde, x, num_steps=NUM_STEPS, eps=EPS, exact_trace=True
    )
    expected, z_expected = data.expected_log_p(x)
    np.testing.assert_allclose(z, z_expected, atol=0.01 * sde.prior_std)
    np.testing.assert_allclose(log_p, expected, atol=LOG_P_TOL)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_hutchinson_matches_closed_form(sde_name):
    sde = SDES[sde_name]
    data = GaussianData(sde, 0.5, 0.2)
    x = data.m0 + data.s0 * jax.random.normal(jax.random.key(0), (4, 2, 2, 1))
    expected, _ = data.expected_log_p(x)
    run = jax.jit(
        lambda key, x, noise: log_likelihood(
            key, data.score_fn, sde, x, num_steps=NUM_STEPS, eps=EPS, hutchinson=noise
        )[0],
        static_argnums=2,
    )
    # The Jacobian here is c(t) I, so u^T J u = c(t) |u|^2: exact for Rademacher
    # noise (|u|^2 = D) whatever the key.
    for key in jax.random.split(jax.random.key(2), 3):
        np.testing.assert_allclose(run(key, x, "rademacher"), expected, atol=LOG_P_TOL)
    # Gaussian noise is only right on average: 512 keys per example (as copies
    # in the batch, each copy draws its own vector), within 4 standard errors.
    copies = 512
    log_p = run(jax.random.key(3), jnp.repeat(x, copies, axis=0), "gaussian").reshape(-1, copies)
    stderr = jnp.std(log_p, axis=1) / math.sqrt(copies)
    assert jnp.all(jnp.std(log_p, axis=1) > 1.0)  # the estimator really is noisy
    assert jnp.all(jnp.abs(jnp.mean(log_p, axis=1) - expected) < 4 * stderr + LOG_P_TOL)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_for_a_random_linear_drift(noise):
    """Score A x with a random non-symmetric A: every Hutchinson draw is wrong, their mean is not.

    The velocity is -beta/2 (I + A) x, and the trajectory does not depend on the
    noise, so the Hutchinson result minus the exact-trace one is exactly
    -1/2 int beta dt (u^T M u - tr M), M = I + A: mean 0, variance
    (1/2 int beta)^2 2 sum S_ij^2 over i != j for Rademacher u (over all i, j
    for Gaussian u), S the symmetric part of M.
    """
    sde = VPSDE()
    dim, copies = 16, 1024
    A = 0.3 * jax.random.normal(jax.random.key(0), (dim, dim)) / math.sqrt(dim)

    def score_fn(x, t):
        return (x.reshape(x.shape[0], -1) @ A.T).reshape(x.shape)

    x = jnp.repeat(jax.random.normal(jax.random.key(1), (1, 4, 4, 1)), copies, axis=0)
    kwargs = dict(num_steps=20, eps=EPS)
    exact, _ = log_likelihood(None, score_fn, sde, x[:1], exact_trace=True, **kwargs)
    log_p, _ = log_likelihood(jax.random.key(2), score_fn, sde, x, hutchinson=noise, **kwargs)

    S = jnp.eye(dim) + 0.5 * (A + A.T)
    off_diagonal = jnp.sum(S**2) - (jnp.sum(jnp.diag(S) ** 2) if noise == "rademacher" else 0.0)
    half_int_beta = 0.5 * (sde.beta_min + 0.5 * (sde.beta_max - sde.beta_min)) * (1 - EPS)
    std = half_int_beta * jnp.sqrt(2 * off_diagonal)
    np.testing.assert_allclose(jnp.std(log_p), std, rtol=0.1)
    assert abs(jnp.mean(log_p) - exact[0]) < 4 * std / math.sqrt(copies)


def test_bits_per_dim_of_a_standard_normal_matches_closed_form():
    """VE data with p_eps = N(0, I): bits/dim -log2 N(x; 0, I) / D, on average 0.5 log2(2 pi e)."""
    sde = SDES["ve"]
    data = GaussianData.with_marginal_at_eps(sde, 0.0, 1.0)
    x = jax.random.normal(jax.random.key(0), (512, 2, 2, 1))
    dim = 4
    log_p, _ = log_likelihood(jax.random.key(1), data.score_fn, sde, x, num_steps=200, eps=EPS)
    bpd = -log_p / (dim * LN2)
    closed_form = -_normal_logpdf(x, 0.0, 1.0) / (dim * LN2)
    expected, _ = data.expected_log_p(x)
    # p_1 = N(0, prior_std^2 + 1 - std_eps^2) is a little wider than the prior;
    # that mismatch, known exactly, is up to 0.03 bits/dim at the tails of x.
    mismatch = -expected / (dim * LN2) - closed_form
    assert jnp.max(jnp.abs(mismatch)) < 0.05
    # Heun at 100 steps on time_grid: up to 0.0064 bits/dim off; at 200, 4x less.
    np.testing.assert_allclose(bpd, closed_form + mismatch, atol=0.005)
    entropy = 0.5 * math.log2(2 * math.pi * math.e)
    assert abs(jnp.mean(bpd) - entropy) < 4 * jnp.std(bpd) / math.sqrt(len(bpd))


@pytest.mark.parametrize(("centered", "mean", "std"), [(False, 0.5, 0.15), (True, 0.1, 0.3)])
def test_bits_per_dim_dequantization_and_scale(centered, mean, std):
    """A model whose density at eps is N(mean, std^2) in model space, on images drawn from it.

    Expected: E_u[-log N(x(u); mean, std^2)] / (D ln 2) + 8 - log2(range), with
    x(u) = (p + u) range / 256 - (range - 1) and E_u[(x - mean)^2] =
    (x(1/2) - mean)^2 + (range / 256)^2 / 12. A missing or doubled range factor
    or a wrong 8-bit offset moves the answer by a whole bit.
    """
    sde = SDES["vp"]
    data = GaussianData.with_marginal_at_eps(sde, mean, std)
    value_range = 2.0 if centered else 1.0
    samples = mean + std * jax.random.normal(jax.random.key(0), (256, 4, 4, 1))
    pixels = jnp.floor((samples + (1.0 if centered else 0.0)) * 256 / value_range)
    images = jnp.clip(pixels, 0, 255).astype(jnp.uint8)
    bpd = bits_per_dim(
        jax.random.key(1), data.score_fn, sde, images, centered=centered, num_steps=100, eps=EPS
    )

    scale = value_range / 256
    mid = (images.astype(jnp.float32) + 0.5) * scale - (1.0 if centered else 0.0)
    sq = (mid - mean) ** 2 + scale**2 / 12
    nats = jnp.sum(0.5 * jnp.log(2 * jnp.pi * std**2) + 0.5 * sq / std**2, axis=(1, 2, 3))
    expected = nats / (16 * LN2) + 8 - math.log2(value_range)
    # Per example: one draw of u (about 0.01 bits/dim here), the VP prior mismatch
    # and Heun's error; the mean over 256 images is far tighter.
    np.testing.assert_allclose(bpd, expected, atol=0.05)
    assert abs(jnp.mean(bpd) - jnp.mean(expected)) < 0.01
