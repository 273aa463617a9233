"""Continuous-time denoising score matching, with the training recipe's noise levels and weights.

The recipe (`LossRecipe`, from `training.*`) decides two things the original project fixed:
- which diffusion times the loss sees: t ~ U(eps, 1) (the original project's), or EDM's
  log-normal noise levels, ln sigma ~ N(p_mean, p_std^2) with sigma(t) = std / alpha
  mapped to t by the SDE (Karras et al. 2022);
- the weight lambda of each example's residual ||std(t) score + z||^2, which is
  the original project's lambda(t) = std(t)^2 weighting: 1 (its own), EDM's
  (sigma^2 + sigma_data^2) / sigma_data^2 (its lambda(sigma) = (sigma^2 +
  sigma_data^2) / (sigma sigma_data)^2 on the denoiser's error, which is sigma
  times the residual), or min-SNR-gamma's min(1, gamma sigma^2) (Hang et al.
  2023: min(SNR, gamma) / SNR on the noise prediction's error, which the
  residual is, with SNR = 1 / sigma^2).
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from jaxdiff.core.common import ScoreFn, per_example
from jaxdiff.diffusion.sde import SDE


def dsm_noise(key: jax.Array, x0: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
    """The random part of `dsm_loss`: times t ~ U(eps, 1) (B,) and noise z ~ N(0, I) like x0.

    Drawn once for a whole batch, they let the batch's loss be computed in
    micro-batches (gradient accumulation) with exactly the big batch's noise.

    Args:
      key: PRNG key for t and z.
      x0: clean data, (B, ...); only its shape is read.
      eps: smallest time, which keeps std(t) away from 0.

    Returns:
      (t, z).
    """
    t_key, z_key = jax.random.split(key)
    t = jax.random.uniform(t_key, (x0.shape[0],), minval=eps, maxval=1.0)
    z = jax.random.normal(z_key, x0.shape)
    return t, z


def dsm_loss_given_noise(
    score_fn: ScoreFn,
    sde: SDE,
    x0: jax.Array,
    t: jax.Array,
    z: jax.Array,
    weights: jax.Array | None = None,
) -> jax.Array:
    """`dsm_loss` at given times t (B,) and noise z (shaped like x0); see `dsm_noise`.

    `weights` (B,) multiply each example's residual (`loss_weights`); None: 1.
    """
    mean, std = sde.marginal_prob(x0, t)
    score = score_fn(mean + per_example(std, x0) * z, t)
    residual = per_example(std, x0) * score.astype(jnp.float32) + z
    per_example_loss = jnp.sum(residual**2, axis=tuple(range(1, x0.ndim)))
    if weights is not None:
        per_example_loss = weights * per_example_loss
    return jnp.mean(per_example_loss)


# training.noise_distribution: how the loss's diffusion times are drawn.
NOISE_DISTRIBUTIONS = ("uniform", "log_normal")
# training.loss_weighting: each example's weight, relative to the original project's std(t)^2.
LOSS_WEIGHTINGS = ("std2", "edm", "min_snr")


@dataclasses.dataclass(frozen=True)
class LossRecipe:
    """Which noise levels the loss sees and how it weighs them (the module docstring)."""

    eps: float = 1e-5
    noise_distribution: str = "uniform"
    p_mean: float = -1.2
    p_std: float = 1.2
    weighting: str = "std2"
    min_snr_gamma: float = 5.0
    sigma_data: float = 0.5


def loss_recipe(config: ml_collections.ConfigDict) -> LossRecipe:
    """The recipe of a run's config: `training.*` and the model's `sigma_data`."""
    t = config.training
    return LossRecipe(
        eps=t.eps,
        noise_distribution=t.noise_distribution,
        p_mean=t.p_mean,
        p_std=t.p_std,
        weighting=t.loss_weighting,
        min_snr_gamma=t.min_snr_gamma,
        sigma_data=config.model.sigma_data,
    )


def draw_training_noise(
    key: jax.Array, x0: jax.Array, sde: SDE, recipe: LossRecipe
) -> tuple[jax.Array, jax.Array]:
    """Times t (B,) and noise z (like x0) of the loss, by the recipe's noise distribution.

    "uniform" is `dsm_noise` exactly. "log_normal" draws sigma = exp(p_mean +
    p_std n), n ~ N(0, 1), and takes the SDE's time of that noise level, clipped
    to [eps, 1] (levels outside the SDE's range count as its ends).
    """
    if recipe.noise_distribution == "uniform":
        return dsm_noise(key, x0, recipe.eps)
    t_key, z_key = jax.random.split(key)
    sigma = jnp.exp(recipe.p_mean + recipe.p_std * jax.random.normal(t_key, (x0.shape[0],)))
    t = jnp.clip(sde.time_at_noise_level(sigma), recipe.eps, 1.0)
    return t, jax.random.normal(z_key, x0.shape)


def loss_weights(sde: SDE, t: jax.Array, recipe: LossRecipe) -> jax.Array | None:
    """Each example's weight (B,) by the recipe's weighting; None for `std2` (all 1)."""
    if recipe.weighting == "std2":
        return None
    sigma = sde.noise_level(t)
    if recipe.weighting == "edm":
        return (sigma**2 + recipe.sigma_data**2) / recipe.sigma_data**2
    return jnp.minimum(1.0, recipe.min_snr_gamma * sigma**2)


def dsm_loss(score_fn: ScoreFn, sde: SDE, x0: jax.Array, key: jax.Array, eps: float) -> jax.Array:
    """Denoising score matching loss with the original project's weighting lambda(t) = std(t)^2.

    t ~ U(eps, 1), x_t = alpha(t) x0 + std(t) z, and the loss is
    E || std(t) * score(x_t, t) + z ||^2, summed over pixels and averaged over
    the batch (the original project's convention). Its minimiser is the score of p(x_t).

    Args:
      score_fn: maps (x_t, t) with t of shape (B,) to a score shaped like x_t.
      sde: the noise process.
      x0: clean data, (B, ...).
      key: PRNG key for t and z.
      eps: smallest time, which keeps std(t) away from 0.

    Returns:
      The scalar loss.
    """
    t, z = dsm_noise(key, x0, eps)
    return dsm_loss_given_noise(score_fn, sde, x0, t, z)
