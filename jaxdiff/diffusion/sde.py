"""Noise processes (forward SDEs) dx = f(x, t) dt + g(t) dw on t in [0, 1].

Each SDE is a small frozen dataclass that owns its maths: the Gaussian
perturbation kernel p(x_t | x_0) = N(alpha(t) x_0, std(t)^2 I), the prior at
t = 1, the drift/diffusion and the reverse-time drifts. Losses and samplers only
talk to this interface, so every model works with every SDE and sampler.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxdiff.core.common import per_example
from jaxdiff.core.errors import UserError


class SDE:
    """Interface shared by all noise processes; subclasses define the four primitives."""

    def mean_coeff(self, t: jax.Array) -> jax.Array:
        """alpha(t): the perturbed mean is alpha(t) * x_0."""
        raise NotImplementedError

    def marginal_std(self, t: jax.Array) -> jax.Array:
        """std(t) of the perturbation kernel p(x_t | x_0)."""
        raise NotImplementedError

    def drift(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """f(x, t) of the forward SDE."""
        raise NotImplementedError

    def diffusion(self, t: jax.Array) -> jax.Array:
        """g(t) of the forward SDE."""
        raise NotImplementedError

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std^2 I) that sampling starts from."""
        raise NotImplementedError

    def noise_level(self, t: jax.Array) -> jax.Array:
        """sigma(t) = std(t) / alpha(t): the noise level of x / alpha(t) = x_0 + sigma z.

        The noise-level samplers (edm, dpm_solver++, ddim) work on x / alpha in
        sigma, where every SDE is the same process (Karras et al. 2022, eq. 4).
        """
        raise NotImplementedError

    def time_at_noise_level(self, sigma: jax.Array) -> jax.Array:
        """The inverse of `noise_level`: the t with sigma(t) = sigma (sigma >= 0)."""
        raise NotImplementedError

    # Derived quantities: written once, in terms of the primitives above.

    def marginal_prob(self, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean (shaped like x0) and std (shaped like t) of p(x_t | x_0)."""
        return per_example(self.mean_coeff(t), x0) * x0, self.marginal_std(t)

    def prior_sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Draws x_1 from the prior."""
        return self.prior_std * jax.random.normal(key, shape)

    def transition(self, s: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Exact forward kernel from time s to t > s: x_t = a x_s + sqrt(v) z.

        Follows from the marginals, since alpha and std compose: alpha(t) =
        a alpha(s) and std(t)^2 = a^2 std(s)^2 + v. Used by the reverse-diffusion
        predictor (ancestral sampling) and the Langevin corrector's step size.
        """
        a = self.mean_coeff(t) / self.mean_coeff(s)
        v = self.marginal_std(t) ** 2 - (a * self.marginal_std(s)) ** 2
        return a, v

    def denoise(self, x: jax.Array, t: jax.Array, score: jax.Array) -> jax.Array:
        """E[x_0 | x_t] = (x + std^2 score) / alpha (Tweedie's formula): the clean estimate."""
        std = per_example(self.marginal_std(t), x)
        return (x + std**2 * score) / per_example(self.mean_coeff(t), x)

    def reverse_drift(self, x: jax.Array, t: jax.Array, score: jax.Array) -> jax.Array:
        """Drift of the reverse-time SDE: f - g^2 * score (integrated backwards in t)."""
        return self.drift(x, t) - per_example(self.diffusion(t) ** 2, x) * score

    def probability_flow_drift(self, x: jax.Array, t: jax.Array, score: jax.Array) -> jax.Array:
        """Velocity of the probability-flow ODE: f - g^2 / 2 * score."""
        return self.drift(x, t) - 0.5 * per_example(self.diffusion(t) ** 2, x) * score


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
    """The original project's variance-exploding SDE dx = sigma^t dw.

    std(t) = sqrt((sigma^(2t) - 1) / (2 ln sigma)), the integral of g^2 = sigma^(2t).
    """

    sigma: float = 25.0

    def mean_coeff(self, t):
        return jnp.ones_like(t)

    def marginal_std(self, t):
        # expm1 keeps precision for small t, where sigma^(2t) - 1 cancels.
        log_sigma = math.log(self.sigma)
        return jnp.sqrt(jnp.expm1(2 * log_sigma * t) / (2 * log_sigma))

    def drift(self, x, t):
        return jnp.zeros_like(x)

    def diffusion(self, t):
        return self.sigma**t

    @property
    def prior_std(self):
        return math.sqrt((self.sigma**2 - 1.0) / (2 * math.log(self.sigma)))

    def noise_level(self, t):
        return self.marginal_std(t)  # alpha = 1

    def time_at_noise_level(self, sigma):
        log_sigma = math.log(self.sigma)
        return jnp.log1p(2 * log_sigma * sigma**2) / (2 * log_sigma)


@dataclasses.dataclass(frozen=True)
class VPSDE(SDE):
    """Variance-preserving SDE (DDPM's continuous limit): dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw.

    beta(t) = beta_min + t (beta_max - beta_min); alpha(t) = exp(-int_0^t beta / 2),
    std(t)^2 = 1 - alpha(t)^2; the prior is N(0, I).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _integrated_beta(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _time_at_integrated_beta(self, b):
        # The positive root of beta_min t + (beta_max - beta_min) t^2 / 2 = b, written
        # without the difference of square roots (exact also when beta_max = beta_min).
        slope = self.beta_max - self.beta_min
        return 2 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2 * slope * b))

    def mean_coeff(self, t):
        return jnp.exp(-0.5 * self._integrated_beta(t))

    def marginal_std(self, t):
        # -expm1 keeps precision for small t, where 1 - alpha^2 cancels.
        return jnp.sqrt(-jnp.expm1(-self._integrated_beta(t)))

    def drift(self, x, t):
        return -0.5 * per_example(self.beta(t), x) * x

    def diffusion(self, t):
        return jnp.sqrt(self.beta(t))

    @property
    def prior_std(self):
        return 1.0

    def noise_level(self, t):
        # std / alpha = sqrt((1 - alpha^2) / alpha^2) = sqrt(e^B - 1), B = int_0^t beta.
        return jnp.sqrt(jnp.expm1(self._integrated_beta(t)))

    def time_at_noise_level(self, sigma):
        return self._time_at_integrated_beta(jnp.log1p(sigma**2))


@dataclasses.dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """sub-VP SDE: VP's drift, diffusion sqrt(beta(t) (1 - exp(-2 int_0^t beta))).

    Same mean as VP, std(t) = 1 - alpha(t)^2 (always below VP's).
    """

    def marginal_std(self, t):
        return -jnp.expm1(-self._integrated_beta(t))

    def diffusion(self, t):
        return jnp.sqrt(self.beta(t) * -jnp.expm1(-2 * self._integrated_beta(t)))

    def noise_level(self, t):
        # (1 - e^-B) / e^(-B/2) = 2 sinh(B / 2).
        return 2 * jnp.sinh(0.5 * self._integrated_beta(t))

    def time_at_noise_level(self, sigma):
        return self._time_at_integrated_beta(2 * jnp.arcsinh(0.5 * sigma))


SDES = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}


def create_sde(sde_config) -> SDE:
    """Builds the SDE named by `sde_config.name` with its parameters."""
    name = sde_config.name
    if name == "ve":
        return VESDE(sigma=sde_config.sigma)
    if name in SDES:
        return SDES[name](beta_min=sde_config.beta_min, beta_max=sde_config.beta_max)
    raise UserError(f"unknown sde.name {name!r}; choose one of {sorted(SDES)}")
