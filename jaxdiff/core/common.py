"""Types and small helpers shared across the package (it imports nothing of jaxdiff's)."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

# A score function s(x, t) ~ grad_x log p_t(x): batch (B, H, W, C) and times (B,)
# in, a batch of scores out. Losses, samplers and guidance all take one.
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def per_example(v: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes a per-example vector (B,) so that it broadcasts against a batch x (B, ...)."""
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))
