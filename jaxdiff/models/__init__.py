"""Score networks, chosen by `config.model.name`."""

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.core.errors import UserError
from jaxdiff.core.registry import Registry
from jaxdiff.models.autoencoder import Autoencoder
from jaxdiff.models.unet import SmallUNet, UNet

# The score networks `model.name` chooses. A builder takes (model_config,
# image_shape, num_classes, dtype) and returns the Linen module; num_classes is 0
# for an unconditional net. `fields` are the model.* fields it reads.
NETWORKS = Registry("model.name")

# What every net reads when conditional (create_model checks them), and the small nets' own.
_CONDITIONING_FIELDS = ("conditional", "context_tokens", "context_dim", "ff_mult", "num_heads")
_SMALL_UNET_FIELDS = (
    "channels",
    "embed_dim",
    "fourier_scale",
    "attention_resolutions",
    "remat",
    *_CONDITIONING_FIELDS,
)


def _small_unet(upsample: str) -> Callable:
    def build(model_config, image_shape, num_classes, dtype):
        c, name = model_config, model_config.name
        channels = tuple(c.channels)
        if len(channels) != 4:
            raise UserError(f"model {name!r} has 4 levels; model.channels={channels}")
        # Three stride-2 VALID 3x3 convs after a stride-1 one: the smallest map must stay >= 1.
        height, width, _ = image_shape
        sides = [min(height, width) - 2]
        for _ in range(3):
            sides.append((sides[-1] - 3) // 2 + 1)
        if sides[-1] < 1:
            raise UserError(f"image {height}x{width} is too small for {name!r} (needs >= 17x17)")
        fields = dict(
            channels=channels, embed_dim=c.embed_dim, fourier_scale=c.fourier_scale, remat=c.remat
        )
        if num_classes:
            if not set(sides) & set(c.attention_resolutions):
                raise UserError(
                    f"model.attention_resolutions={tuple(c.attention_resolutions)} names none of "
                    f"{name!r}'s feature-map sides {sides}: the condition would be ignored"
                )
            fields.update(
                _class_fields(c, num_classes),
                attention_resolutions=tuple(c.attention_resolutions),
                num_heads=c.num_heads,
            )
        return SmallUNet(**fields, upsample=upsample, dtype=dtype)

    return build


# The original project's net as published (transposed-conv decoder): the MNIST
# configs' and the benchmark against the PyTorch original. Runs written before the
# rename store its former name.
NETWORKS.register("small_unet", fields=_SMALL_UNET_FIELDS, aliases=("seed_unet",))(
    _small_unet("transpose")
)
# Same parameters; the decoder upsamples by resize + 3x3 conv.
NETWORKS.register("small_unet_resize", fields=_SMALL_UNET_FIELDS, aliases=("seed_unet_resize",))(
    _small_unet("resize")
)


@NETWORKS.register(
    "unet",
    fields=(*_SMALL_UNET_FIELDS, "num_res_blocks", "dropout"),
)
def _unet(model_config, image_shape, num_classes, dtype):
    c = model_config
    channels = tuple(c.channels)
    # Sides halve (rounding up) between levels and the decoder resizes back to each
    # skip's size, so any size works that leaves the deepest level more than one pixel.
    height, width, _ = image_shape
    factor = 2 ** (len(channels) - 1)
    if min(height, width) <= factor // 2:
        raise UserError(
            f"image {height}x{width} is too small for model 'unet' with {len(channels)} levels "
            f"(needs sides > {factor // 2}); use fewer model.channels"
        )
    return UNet(
        channels=channels,
        embed_dim=c.embed_dim,
        fourier_scale=c.fourier_scale,
        num_res_blocks=c.num_res_blocks,
        attention_resolutions=tuple(c.attention_resolutions),
        num_heads=c.num_heads,
        dropout=c.dropout,
        remat=c.remat,
        dtype=dtype,
        **(_class_fields(c, num_classes) if num_classes else {}),
    )


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
    network = NETWORKS.get(c.name)
    if c.conditional:
        _check_conditioning(c, num_classes)
    return network.build(
        c, tuple(image_shape), num_classes if c.conditional else 0, dtype or jnp.float32
    )


def _check_conditioning(model_config, num_classes: int) -> None:
    c = model_config
    if num_classes < 1:
        raise UserError("model.conditional needs a dataset with classes")
    for field in ("context_tokens", "context_dim", "ff_mult", "num_heads"):
        if c[field] < 1:
            raise UserError(f"model.{field} must be positive, got {c[field]}")
    for width in c.channels:
        if width % c.num_heads:
            raise UserError(
                f"model.channels={tuple(c.channels)} do not split into "
                f"model.num_heads={c.num_heads} heads"
            )


def _class_fields(model_config, num_classes: int) -> dict:
    """The keyword arguments every conditional net takes."""
    c = model_config
    return dict(
        num_classes=num_classes,
        context_tokens=c.context_tokens,
        context_dim=c.context_dim,
        ff_mult=c.ff_mult,
    )


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


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(math.prod(p.shape) for p in jax.tree.leaves(params))
