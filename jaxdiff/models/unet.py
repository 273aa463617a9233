"""Score U-Nets: the original project's small net and a residual/attention ("enhanced") net.

Both map (x_t, t) to a tensor shaped like x_t, which `jaxdiff.diffusion.preconditioning`
turns into a score. With `num_classes > 0` they are conditional: they also take
class labels (the null label `num_classes` meaning "none"), embedded as
condition tokens that spatial-transformer blocks cross-attend to.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff import ops
from jaxdiff.models.layers import (
    ClassContext,
    ConvTranspose,
    Dtype,
    GroupNorm,
    ResBlock,
    SelfAttentionBlock,
    SpatialTransformer,
    TimeEmbedding,
    call_module,
    group_count,
    rematerialized,
    resize_and_conv,
    resize_to,
)


class ConditioningMixin:
    """Fields and helpers shared by the conditional versions of both U-Nets."""

    def context(self, labels: jax.Array | None, batch: int) -> jax.Array | None:
        """Condition tokens of the labels, or None for an unconditional net."""
        if not self.num_classes:
            return None
        if labels is None or labels.shape not in ((batch,), (batch, self.num_classes + 1)):
            raise ValueError(
                f"a conditional net needs labels of shape ({batch},) or class weights "
                f"({batch}, {self.num_classes + 1})"
            )
        return ClassContext(
            self.num_classes, self.context_tokens, self.context_dim, self.dtype, name="context"
        )(labels)

    def transformer(self) -> SpatialTransformer:
        return SpatialTransformer(self.num_heads, self.ff_mult, self.dtype)


class SmallUNet(nn.Module, ConditioningMixin):
    """The original project's small MNIST score network, layer for layer.

    Encoder: 3x3 VALID convs (stride 1, then 2, 2, 2; computed by
    `jaxdiff.ops.strided_conv`) with the time embedding
    added after each conv, GroupNorm (4 groups at the first level, 32 elsewhere),
    swish. Decoder mirrors it with additive skips. `upsample` picks the decoder's
    upsampling: "transpose" is the original transposed convolution (see
    `jaxdiff.ops.conv_transpose` for how it is computed); "resize" is
    nearest-neighbour resize to the skip's size + 3x3 SAME conv, four times the
    work at the same parameter count, and slower to train (docs/performance.md).

    Conditional (`num_classes > 0`): a spatial transformer follows every encoder
    level and decoder level whose side is in `attention_resolutions`.

    `remat`: each level (conv or upsampling, time embedding, norm, swish and its
    transformer) recomputes its activations in the backward pass; same parameters.
    """

    channels: Sequence[int] = (32, 64, 128, 256)
    embed_dim: int = 256
    fourier_scale: float = 30.0
    upsample: str = "transpose"
    num_classes: int = 0
    attention_resolutions: Sequence[int] = (5, 2)
    num_heads: int = 1
    context_tokens: int = 4
    context_dim: int = 256
    ff_mult: int = 4
    remat: bool = False
    dtype: Dtype = jnp.float32

    def _up(self, h: jax.Array, features: int, target: tuple[int, int], stride: int, bias: bool):
        if self.upsample == "resize":
            h = resize_to(h, *target)
            return nn.Conv(features, (3, 3), padding="SAME", use_bias=bias, dtype=self.dtype)(h)
        h = ConvTranspose(features, stride=stride, dtype=self.dtype)(h, target)
        if bias:
            h = h + self.param("bias", nn.initializers.zeros, (features,)).astype(h.dtype)
        return h

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        del train  # This net has no dropout.
        temb = TimeEmbedding(self.embed_dim, self.fourier_scale, self.dtype)(t)
        context = self.context(labels, x.shape[0])
        # The levels are methods of this module, so remat keeps their parameter names.
        encoder_level = rematerialized(type(self)._encoder_level, self.remat, static_argnums=(4,))
        decoder_level = rematerialized(type(self)._decoder_level, self.remat)

        # Encoder: 28 -> 26 -> 12 -> 5 -> 2 on MNIST.
        h = x.astype(self.dtype)
        encoder = []
        for level in range(len(self.channels)):
            h = encoder_level(self, h, temb, context, level)
            encoder.append(h)
        # Decoder: up to each encoder level's size, then add that level's activation.
        for level in range(len(self.channels) - 1, 0, -1):
            h = decoder_level(self, h, encoder[level - 1], temb, context)
        h = self._up(h, x.shape[-1], x.shape[1:3], stride=1, bias=True)
        return h.astype(jnp.float32)

    def _attend(self, h: jax.Array, context: jax.Array | None) -> jax.Array:
        if context is not None and h.shape[1] in self.attention_resolutions:
            return self.transformer()(h, context)
        return h

    def _add_time_and_normalize(self, h: jax.Array, temb: jax.Array, groups: int = 32):
        h = h + nn.Dense(h.shape[-1], dtype=self.dtype)(temb)[:, None, None, :]
        norm = GroupNorm(group_count(h.shape[-1], groups), dtype=self.dtype)
        return nn.swish(norm(h))

    def _encoder_level(
        self, h: jax.Array, temb: jax.Array, context: jax.Array | None, level: int
    ) -> jax.Array:
        h = nn.Conv(
            self.channels[level],
            (3, 3),
            1 if level == 0 else 2,
            "VALID",
            use_bias=False,
            dtype=self.dtype,
            conv_general_dilated=ops.strided_conv_general_dilated,
        )(h)
        h = self._add_time_and_normalize(h, temb, groups=4 if level == 0 else 32)
        return self._attend(h, context)

    def _decoder_level(
        self, h: jax.Array, skip: jax.Array, temb: jax.Array, context: jax.Array | None
    ) -> jax.Array:
        h = self._up(h, skip.shape[-1], skip.shape[1:3], stride=2, bias=False)
        return self._attend(self._add_time_and_normalize(h, temb) + skip, context)


class UNet(nn.Module, ConditioningMixin):
    """The "enhanced" score network: DDPM-style residual U-Net with self-attention.

    `channels[i]` is the width at level i; resolution halves between levels
    (strided 3x3 conv down; nearest resize + 3x3 conv up, computed on the small
    map by `jaxdiff.ops.upsample2x_conv` where the resize is exactly 2x). Each level
    has `num_res_blocks` residual blocks (one more on the way up, fed by the
    concatenated skips), and self-attention where the feature map's side is in
    `attention_resolutions`. The bottleneck is res-attn-res. Conditional
    (`num_classes > 0`): every attention block is a spatial transformer
    (self-attention, cross-attention to the condition tokens, feed-forward).

    `remat`: every residual and attention block recomputes its activations in
    the backward pass (the attention maps are the largest); same parameters.
    """

    channels: Sequence[int] = (64, 128, 128)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (7,)
    num_heads: int = 1
    dropout: float = 0.1
    embed_dim: int = 256
    fourier_scale: float = 30.0
    num_classes: int = 0
    context_tokens: int = 4
    context_dim: int = 256
    ff_mult: int = 4
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        temb = TimeEmbedding(self.embed_dim, self.fourier_scale, self.dtype)(t)
        context = self.context(labels, x.shape[0])
        # `train` (argument 3 of the lifted call) decides dropout: static.
        res_call = rematerialized(call_module, self.remat, static_argnums=(3,))
        attn_call = rematerialized(call_module, self.remat)

        def res(channels):
            block = ResBlock(channels, self.dropout, self.dtype)
            return lambda h, temb, train: res_call(block, h, temb, train)

        def attn():
            if context is None:
                return lambda h: attn_call(SelfAttentionBlock(self.num_heads, self.dtype), h)
            return lambda h: attn_call(self.transformer(), h, context)

        h = nn.Conv(self.channels[0], (3, 3), dtype=self.dtype)(x.astype(self.dtype))
        skips = [h]
        for level, channels in enumerate(self.channels):
            for _ in range(self.num_res_blocks):
                h = res(channels)(h, temb, train)
                if h.shape[1] in self.attention_resolutions:
                    h = attn()(h)
                skips.append(h)
            if level < len(self.channels) - 1:
                h = nn.Conv(channels, (3, 3), (2, 2), dtype=self.dtype)(h)
                skips.append(h)

        h = res(self.channels[-1])(h, temb, train)
        h = attn()(h)
        h = res(self.channels[-1])(h, temb, train)

        for level in reversed(range(len(self.channels))):
            for _ in range(self.num_res_blocks + 1):
                h = res(self.channels[level])(
                    jnp.concatenate([h, skips.pop()], axis=-1), temb, train
                )
                if h.shape[1] in self.attention_resolutions:
                    h = attn()(h)
            if level > 0:
                h = resize_and_conv(h, *skips[-1].shape[1:3], self.channels[level], self.dtype)

        h = nn.swish(GroupNorm(group_count(h.shape[-1]), dtype=self.dtype)(h))
        h = nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
        return h.astype(jnp.float32)
