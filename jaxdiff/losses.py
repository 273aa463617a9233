"""Continuous-time denoising score matching."""

import jax
import jax.numpy as jnp

from jaxdiff.common import ScoreFn, per_example
from jaxdiff.sde import SDE


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
    score_fn: ScoreFn, sde: SDE, x0: jax.Array, t: jax.Array, z: jax.Array
) -> jax.Array:
    """`dsm_loss` at given times t (B,) and noise z (shaped like x0); see `dsm_noise`."""
    mean, std = sde.marginal_prob(x0, t)
    score = score_fn(mean + per_example(std, x0) * z, t)
    residual = per_example(std, x0) * score.astype(jnp.float32) + z
    return jnp.mean(jnp.sum(residual**2, axis=tuple(range(1, x0.ndim))))


def dsm_loss(score_fn: ScoreFn, sde: SDE, x0: jax.Array, key: jax.Array, eps: float) -> jax.Array:
    """Denoising score matching loss with the seed's weighting lambda(t) = std(t)^2.

    t ~ U(eps, 1), x_t = alpha(t) x0 + std(t) z, and the loss is
    E || std(t) * score(x_t, t) + z ||^2, summed over pixels and averaged over
    the batch (the seed's convention). Its minimiser is the score of p(x_t).

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
