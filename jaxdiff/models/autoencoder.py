"""The autoencoder of latent diffusion: images <-> a smaller latent map (e.g. 28x28x1 <-> 7x7x4)."""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.layers import Dtype, GroupNorm, ResBlock, group_count, resize_and_conv


def level_sides(side: int, levels: int) -> list[int]:
    """Feature-map side at each level: halved (rounding up) between levels."""
    sides = [side]
    for _ in range(levels - 1):
        sides.append(math.ceil(sides[-1] / 2))
    return sides


class Encoder(nn.Module):
    """Convs and residual blocks, halving the resolution between levels.

    Returns the mean and log-variance of the latent (both (B, h, w, latent_channels));
    for a plain autoencoder the log-variance is None.
    """

    channels: Sequence[int]
    num_res_blocks: int
    latent_channels: int
    variational: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        h = nn.Conv(self.channels[0], (3, 3), dtype=self.dtype)(x.astype(self.dtype))
        for level, width in enumerate(self.channels):
            for _ in range(self.num_res_blocks):
                h = ResBlock(width, dtype=self.dtype)(h, None, train=False)  # No dropout.
            if level < len(self.channels) - 1:
                h = nn.Conv(width, (3, 3), (2, 2), dtype=self.dtype)(h)
        h = nn.swish(GroupNorm(group_count(h.shape[-1]), dtype=self.dtype)(h))
        outputs = self.latent_channels * (2 if self.variational else 1)
        h = nn.Conv(outputs, (3, 3), dtype=self.dtype)(h).astype(jnp.float32)
        if not self.variational:
            return h, None
        mean, log_var = jnp.split(h, 2, axis=-1)
        # Bounded as in latent diffusion: exp(log_var) must neither vanish nor overflow.
        return mean, jnp.clip(log_var, -30.0, 20.0)


class Decoder(nn.Module):
    """Mirror of the encoder: residual blocks, nearest resize + conv back to each level's size."""

    channels: Sequence[int]
    num_res_blocks: int
    image_shape: tuple[int, int, int]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        heights = level_sides(self.image_shape[0], len(self.channels))
        widths = level_sides(self.image_shape[1], len(self.channels))
        h = nn.Conv(self.channels[-1], (3, 3), dtype=self.dtype)(z.astype(self.dtype))
        for level in reversed(range(len(self.channels))):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.channels[level], dtype=self.dtype)(h, None, train=False)
            if level > 0:
                h = resize_and_conv(
                    h, heights[level - 1], widths[level - 1], self.channels[level - 1], self.dtype
                )
        h = nn.swish(GroupNorm(group_count(h.shape[-1]), dtype=self.dtype)(h))
        return nn.Conv(self.image_shape[-1], (3, 3), dtype=self.dtype)(h).astype(jnp.float32)


class Autoencoder(nn.Module):
    """Encoder + decoder. `__call__` reconstructs (through a posterior sample if variational)."""

    channels: Sequence[int]
    num_res_blocks: int
    latent_channels: int
    variational: bool
    image_shape: tuple[int, int, int]
    dtype: Dtype = jnp.float32

    def setup(self):
        self.encoder = Encoder(
            self.channels, self.num_res_blocks, self.latent_channels, self.variational, self.dtype
        )
        self.decoder = Decoder(self.channels, self.num_res_blocks, self.image_shape, self.dtype)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """Posterior mean and log-variance (None for a plain autoencoder)."""
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        """Latents back to images."""
        return self.decoder(z)

    def __call__(
        self, x: jax.Array, key: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """(reconstruction, mean, log_var); samples z ~ N(mean, exp(log_var)) given a key."""
        mean, log_var = self.encode(x)
        z = mean
        if log_var is not None and key is not None:
            z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape)
        return self.decode(z), mean, log_var


def kl_divergence(mean: jax.Array, log_var: jax.Array) -> jax.Array:
    """KL(N(mean, exp(log_var)) || N(0, I)), summed over the latent, one value per example."""
    axes = tuple(range(1, mean.ndim))
    return 0.5 * jnp.sum(mean**2 + jnp.exp(log_var) - 1.0 - log_var, axis=axes)


def latent_shape(autoencoder_config, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(h, w, latent_channels) of the latents of images of `image_shape`."""
    levels = len(autoencoder_config.channels)
    return (
        level_sides(image_shape[0], levels)[-1],
        level_sides(image_shape[1], levels)[-1],
        autoencoder_config.latent_channels,
    )
