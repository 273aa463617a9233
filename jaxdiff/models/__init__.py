"""Score networks, chosen by `config.model.name`."""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.errors import UserError
from jaxdiff.losses import ScoreFn
from jaxdiff.models.autoencoder import Autoencoder
from jaxdiff.models.unet import SeedUNet, UNet
from jaxdiff.sde import SDE, _bcast

MODELS = {
    # The seed's net as published (transposed-conv decoder): the MNIST configs'
    # and the benchmark against the PyTorch original.
    "seed_unet": functools.partial(SeedUNet, upsample="transpose"),
    # Same parameters, decoder upsamples by resize + 3x3 conv (4x the work).
    "seed_unet_resize": functools.partial(SeedUNet, upsample="resize"),
    "unet": UNet,
}


def create_model(
    model_config,
    image_shape: tuple[int, int, int],
    dtype: jnp.dtype | None = None,
    num_classes: int = 0,
) -> nn.Module:
    """Builds the score network named by `model_config.name` for images of `image_shape` (HWC).

    With `model_config.conditional`, the net is conditioned on `num_classes`
    classes (plus the null class) through cross-attention.

    Raises:
      UserError: for an unknown name or an image shape the architecture cannot take.
    """
    c = model_config
    dtype = dtype or jnp.float32
    if c.name not in MODELS:
        raise UserError(f"unknown model.name {c.name!r}; choose one of {sorted(MODELS)}")
    if c.preconditioning not in PRECONDITIONINGS:
        raise UserError(
            f"unknown model.preconditioning {c.preconditioning!r}; "
            f"choose one of {list(PRECONDITIONINGS)}"
        )
    height, width, _ = image_shape
    channels = tuple(c.channels)
    common = dict(channels=channels, embed_dim=c.embed_dim, fourier_scale=c.fourier_scale)
    if c.conditional:
        common.update(_conditioning_fields(c, channels, num_classes))
    if c.name.startswith("seed_unet"):
        if len(channels) != 4:
            raise UserError(f"model {c.name!r} has 4 levels; model.channels={channels}")
        # Three stride-2 VALID 3x3 convs after a stride-1 one: the smallest map must stay >= 1.
        sides = [min(height, width) - 2]
        for _ in range(3):
            sides.append((sides[-1] - 3) // 2 + 1)
        if sides[-1] < 1:
            raise UserError(f"image {height}x{width} is too small for {c.name!r} (needs >= 16x16)")
        if c.conditional and not set(sides) & set(c.attention_resolutions):
            raise UserError(
                f"model.attention_resolutions={tuple(c.attention_resolutions)} names none of "
                f"{c.name!r}'s feature-map sides {sides}: the condition would be ignored"
            )
        return MODELS[c.name](**common, dtype=dtype)
    # Sides halve (rounding up) between levels and the decoder resizes back to each
    # skip's size, so any size works that leaves the deepest level more than one pixel.
    factor = 2 ** (len(channels) - 1)
    if min(height, width) <= factor // 2:
        raise UserError(
            f"image {height}x{width} is too small for model 'unet' with {len(channels)} levels "
            f"(needs sides > {factor // 2}); use fewer model.channels"
        )
    return UNet(
        **common,
        num_res_blocks=c.num_res_blocks,
        attention_resolutions=tuple(c.attention_resolutions),
        num_heads=c.num_heads,
        dropout=c.dropout,
        dtype=dtype,
    )


def _conditioning_fields(model_config, channels: tuple[int, ...], num_classes: int) -> dict:
    c = model_config
    if num_classes < 1:
        raise UserError("model.conditional needs a dataset with classes")
    for field in ("context_tokens", "context_dim", "ff_mult", "num_heads"):
        if c[field] < 1:
            raise UserError(f"model.{field} must be positive, got {c[field]}")
    for width in channels:
        if width % c.num_heads:
            raise UserError(
                f"model.channels={channels} do not split into model.num_heads={c.num_heads} heads"
            )
    fields = dict(
        num_classes=num_classes,
        context_tokens=c.context_tokens,
        context_dim=c.context_dim,
        ff_mult=c.ff_mult,
    )
    if c.name.startswith("seed_unet"):  # The residual UNet takes these in any case.
        fields.update(attention_resolutions=tuple(c.attention_resolutions), num_heads=c.num_heads)
    return fields


RECONSTRUCTION_LOSSES = ("l1", "mse")


def create_autoencoder(
    autoencoder_config, image_shape: tuple[int, int, int], dtype: jnp.dtype | None = None
) -> Autoencoder:
    """Builds latent diffusion's autoencoder from the `autoencoder` config group.

    Raises:
      UserError: for impossible sizes or an unknown reconstruction loss.
    """
    c = autoencoder_config
    if not c.channels or min(c.channels) < 1:
        raise UserError(f"autoencoder.channels must be positive widths, got {tuple(c.channels)}")
    for field in ("latent_channels", "num_res_blocks"):
        if c[field] < 1:
            raise UserError(f"autoencoder.{field} must be positive, got {c[field]}")
    if c.reconstruction_loss not in RECONSTRUCTION_LOSSES:
        raise UserError(
            f"unknown autoencoder.reconstruction_loss {c.reconstruction_loss!r}; "
            f"choose one of {list(RECONSTRUCTION_LOSSES)}"
        )
    if c.kl_weight < 0:
        raise UserError(f"autoencoder.kl_weight must be >= 0, got {c.kl_weight}")
    return Autoencoder(
        channels=tuple(c.channels),
        num_res_blocks=c.num_res_blocks,
        latent_channels=c.latent_channels,
        variational=c.variational,
        image_shape=tuple(image_shape),
        dtype=dtype or jnp.float32,
    )


PRECONDITIONINGS = ("none", "edm")


def make_score_fn(
    model: nn.Module,
    params: Any,
    sde: SDE,
    model_config,
    train: bool = False,
    dropout_key: jax.Array | None = None,
    labels: jax.Array | None = None,
) -> ScoreFn:
    """Turns the network into a score function s(x, t), as `model_config.preconditioning` says.

    A conditional network is evaluated at the class `labels` (B,).

    "none" is the seed's parametrisation: s = F(x, t) / std(t) (the network
    predicts -z). "edm" wraps the same network in Karras et al.'s (2022)
    preconditioning, written for any SDE through sigma = std / alpha and
    x~ = x / alpha: D = c_skip x~ + c_out F(c_in x~, t), s = (D - x~) / (sigma^2 alpha),
    with c_in = 1 / sqrt(sigma^2 + sd^2), c_skip = sd^2 / (sigma^2 + sd^2),
    c_out = sigma sd / sqrt(sigma^2 + sd^2), sd = `model_config.sigma_data`. The
    network's input then has unit scale and its target is O(1) at every noise
    level; with F = 0 the score is exactly that of N(0, sd^2) data.
    """

    def network(x, t):
        rngs = {"dropout": dropout_key} if train else None
        return model.apply({"params": params}, x, t, labels, train=train, rngs=rngs)

    if model_config.preconditioning == "none":
        return lambda x, t: network(x, t) / _bcast(sde.marginal_std(t), x)

    sigma_data = model_config.sigma_data

    def score_fn(x, t):
        alpha = _bcast(sde.mean_coeff(t), x)
        sigma = _bcast(sde.marginal_std(t), x) / alpha
        total = sigma**2 + sigma_data**2
        x_scaled = x / alpha
        out = network(x_scaled * jax.lax.rsqrt(total), t)
        # (D - x~) / sigma^2 with c_skip - 1 = -sigma^2 / total cancelled by hand:
        # subtracting D - x~ directly loses float32 precision at small sigma.
        return (sigma_data * jax.lax.rsqrt(total) * out / sigma - x_scaled / total) / alpha

    return score_fn


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(math.prod(p.shape) for p in jax.tree.leaves(params))
