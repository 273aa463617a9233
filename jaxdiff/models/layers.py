"""Building blocks shared by the score networks."""

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import ops

Dtype = jnp.dtype


def group_count(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups: max_groups where it divides the channels, else their gcd."""
    return math.gcd(channels, max_groups)


class GroupNorm(nn.Module):
    """`flax.linen.GroupNorm(num_groups)`'s function and parameters, computed by
    `jaxdiff.ops.group_norm`.

    The same parameters (`scale`, `bias`, float32) and default name as flax's,
    so checkpoints carry over; statistics are computed in float32 and the
    result is cast to `dtype`.
    """

    num_groups: int = 32
    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        y = ops.group_norm(x, scale, bias, self.num_groups, self.epsilon)
        return y.astype(self.dtype or jnp.result_type(x, scale))


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of t: [sin(2 pi t W), cos(2 pi t W)], W ~ N(0, scale^2).

    W is fixed, not trained (as in the original project). It is a constant of the
    module, not a parameter, so the optimizer (and its weight decay) never touches
    it; the fixed seed makes every instance use the same frequencies.
    """

    embed_dim: int
    scale: float = 30.0

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        w = np.random.default_rng(0).standard_normal(self.embed_dim // 2) * self.scale
        proj = t[:, None] * jnp.asarray(w, jnp.float32)[None, :] * 2 * np.pi
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class TimeEmbedding(nn.Module):
    """Fourier features -> dense -> swish: the vector added at every level."""

    embed_dim: int
    scale: float = 30.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        features = GaussianFourierProjection(self.embed_dim, self.scale)(t)
        return nn.swish(nn.Dense(self.embed_dim, dtype=self.dtype)(features))


class ResBlock(nn.Module):
    """DDPM residual block: GN-swish-conv, + time projection, GN-swish-dropout-conv, + skip.

    Without a time embedding (`temb=None`, as in the autoencoder) there is no projection.
    """

    out_channels: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None, train: bool) -> jax.Array:
        in_channels = x.shape[-1]
        norm = functools.partial(GroupNorm, dtype=self.dtype)
        h = nn.swish(norm(group_count(in_channels))(x))
        h = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype)(h)
        if temb is not None:
            h = h + nn.Dense(self.out_channels, dtype=self.dtype)(temb)[:, None, None, :]
        h = nn.swish(norm(group_count(self.out_channels))(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        # Zero-initialised last conv: each block starts as the identity, which
        # keeps early training stable in deep nets (DDPM, NCSN++).
        h = nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype)(
            h
        )
        if in_channels != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype)(x)
        return x + h


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention of `x` to `context` (to itself if None).

    Queries come from x (B, N, C), keys and values from context (B, L, D); the
    output has x's shape. Projections have biases. `zero_init_output` starts the
    layer at 0, so a residual block around it starts as the identity.
    """

    num_heads: int = 1
    zero_init_output: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        channels = x.shape[-1]
        if channels % self.num_heads:
            raise ValueError(f"{channels} channels do not split into {self.num_heads} heads")
        context = x if context is None else context
        heads = (self.num_heads, channels // self.num_heads)
        q = nn.DenseGeneral(heads, dtype=self.dtype, name="query")(x)
        k = nn.DenseGeneral(heads, dtype=self.dtype, name="key")(context)
        v = nn.DenseGeneral(heads, dtype=self.dtype, name="value")(context)
        # Dispatches to fused (flash) kernels where the backend has them.
        out = jax.nn.dot_product_attention(q, k, v)
        kernel_init = (
            nn.initializers.zeros if self.zero_init_output else nn.initializers.lecun_normal()
        )
        return nn.DenseGeneral(
            channels, axis=(-2, -1), kernel_init=kernel_init, dtype=self.dtype, name="out"
        )(out)


class SelfAttentionBlock(nn.Module):
    """Pre-GroupNorm multi-head self-attention over the pixels of a feature map, + residual."""

    num_heads: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        y = GroupNorm(group_count(c), dtype=self.dtype)(x).reshape(b, h * w, c)
        out = MultiHeadAttention(self.num_heads, zero_init_output=True, dtype=self.dtype)(y)
        return x + out.reshape(b, h, w, c)


class SpatialTransformer(nn.Module):
    """Transformer block over the pixels of a feature map, conditioned by cross-attention.

    On the H*W pixel tokens: pre-LayerNorm self-attention, pre-LayerNorm
    cross-attention to the condition tokens, pre-LayerNorm GELU feed-forward
    (`ff_mult` times wide), each with a residual. The three output projections
    start at zero, so the block starts as the identity.
    """

    num_heads: int = 1
    ff_mult: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        attention = lambda: MultiHeadAttention(  # noqa: E731
            self.num_heads, zero_init_output=True, dtype=self.dtype
        )
        y = x.reshape(b, h * w, c)
        y = y + attention()(nn.LayerNorm(dtype=self.dtype)(y))
        y = y + attention()(nn.LayerNorm(dtype=self.dtype)(y), context.astype(self.dtype))
        z = nn.gelu(nn.Dense(self.ff_mult * c, dtype=self.dtype)(nn.LayerNorm(dtype=self.dtype)(y)))
        y = y + nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype)(z)
        return y.reshape(b, h, w, c)


class ClassContext(nn.Module):
    """Condition tokens of a class: a learned embedding of the label, as `num_tokens` tokens.

    Labels run over [0, num_classes]; `num_classes` is the learned null token of
    classifier-free guidance. Several tokens per class give the cross-attention
    something to choose between (with one token, softmax attention is constant).
    """

    num_classes: int
    num_tokens: int = 4
    features: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, labels: jax.Array) -> jax.Array:
        """(B,) class ids, or (B, num_classes + 1) weights of the classes' embeddings (mixtures,
        for interpolating between conditions) -> (B, num_tokens, features) tokens."""
        embed = nn.Embed(self.num_classes + 1, self.num_tokens * self.features, dtype=self.dtype)
        if labels.ndim == 2:
            tokens = labels.astype(self.dtype) @ embed(jnp.arange(self.num_classes + 1))
        else:
            tokens = embed(labels)
        return tokens.reshape(labels.shape[0], self.num_tokens, self.features)


def call_module(module: nn.Module, *args: Any) -> Any:
    """`module(*args)`: the function `rematerialized` lifts to remat a submodule's call."""
    return module(*args)


def rematerialized(
    fn: Callable[..., Any], remat: bool, static_argnums: tuple[int, ...] = ()
) -> Callable[..., Any]:
    """`fn`, or with `remat` `nn.remat(fn)`: its activations are then recomputed in the
    backward pass, and only its inputs kept.

    `fn` takes a module as its first argument: `call_module` with a submodule, or a
    method of the calling module (`type(self).method` with `self`). The lifted call
    runs in that module's own scope, so parameter names and shapes are the same with
    and without remat, and checkpoints carry over. `static_argnums` count the module
    as argument 0; Python values such as the `train` flag must be among them.
    """
    return nn.remat(fn, static_argnums=static_argnums) if remat else fn


def resize_to(x: jax.Array, height: int, width: int) -> jax.Array:
    """Nearest-neighbour resize of an NHWC map to (height, width)."""
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), method="nearest")


def resize_and_conv(
    x: jax.Array, height: int, width: int, features: int, dtype: Dtype
) -> jax.Array:
    """Nearest resize of NHWC `x` to (height, width), then a 3x3 SAME `nn.Conv`.

    Call inside a compact method: the conv is a submodule of the caller, with
    flax's parameters. `jaxdiff.ops.resize_conv_general_dilated` computes the
    two (an exact 2x resize as one convolution of the small map).
    """
    resize_conv = functools.partial(ops.resize_conv_general_dilated, size=(height, width))
    return nn.Conv(features, (3, 3), dtype=dtype, conv_general_dilated=resize_conv)(x)


class ConvTranspose(nn.Module):
    """`SmallUNet`'s transposed convolution (VALID, no bias) to a given output size.

    Same parameter as `flax.linen.ConvTranspose` ("kernel", (h, w, in, out),
    LeCun-normal), and so the same parameter path and checkpoints; computed by
    `jaxdiff.ops.conv_transpose`.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (*self.kernel_size, x.shape[-1], self.features),
        )
        return ops.conv_transpose(
            x.astype(self.dtype), kernel.astype(self.dtype), self.stride, tuple(output_size)
        )
