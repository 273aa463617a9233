"""Building blocks shared by the score networks."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

Dtype = jnp.dtype


def group_count(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups: max_groups where it divides the channels, else their gcd."""
    return math.gcd(channels, max_groups)


def group_norm(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    groups: int,
    epsilon: float = 1e-6,
    per_channel: bool = False,
) -> jax.Array:
    """Group normalisation of `x` over all axes but the first and last, in float32.

    The function `flax.linen.GroupNorm` computes, the variance as E[x^2] - E[x]^2,
    in one of two forms. By default flax's: statistics over a (batch, pixels,
    groups, channels per group) view, then (x - mean) * multiplier + bias per
    channel. `per_channel`: means over the pixels of each channel, combined
    into group statistics, then one multiply-add per element,
    x * multiplier + shift.
    On the CPU the per-channel form made the networks' sampling 1.04-1.21x as
    fast, but the seed nets' training steps, which differentiate it, ran at
    0.85-0.92x the speed (benchmarks/group_norm.py, docs/performance.md).
    """
    x32 = x.astype(jnp.float32)
    scale, bias = scale.astype(jnp.float32), bias.astype(jnp.float32)
    pixels = tuple(range(1, x.ndim - 1))
    channels = x.shape[-1]

    def to_channels(group_values: jax.Array) -> jax.Array:
        # (N, groups) -> (N, 1, ..., 1, channels), broadcast over the pixels.
        values = jnp.repeat(group_values, channels // groups, axis=1)
        return values.reshape(x.shape[0], *(1,) * len(pixels), channels)

    if per_channel:
        mean = jnp.mean(x32, axis=pixels).reshape(x.shape[0], groups, -1).mean(-1)
        mean_of_squares = jnp.mean(jnp.square(x32), axis=pixels)
        mean_of_squares = mean_of_squares.reshape(x.shape[0], groups, -1).mean(-1)
    else:
        grouped = x32.reshape(x.shape[0], -1, groups, channels // groups)
        mean = jnp.mean(grouped, axis=(1, 3))
        mean_of_squares = jnp.mean(jnp.square(grouped), axis=(1, 3))
    inv_std = jax.lax.rsqrt(jnp.maximum(mean_of_squares - mean**2, 0.0) + epsilon)
    multiplier = to_channels(inv_std) * scale
    if per_channel:
        return x32 * multiplier + (bias - to_channels(mean) * multiplier)
    return (x32 - to_channels(mean)) * multiplier + bias


class GroupNorm(nn.Module):
    """`group_norm` as a drop-in `flax.linen.GroupNorm(num_groups)`.

    The same function, parameters (`scale`, `bias`, float32) and default name,
    so checkpoints carry over; statistics are computed in float32 and the result
    is cast to `dtype`. Networks set `per_channel` where they are not trained
    (`train=False`: sampling, likelihoods, evaluation), the form that evaluates
    faster; training steps differentiate flax's form, which ran them faster.
    """

    num_groups: int = 32
    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    per_channel: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        if channels % self.num_groups:
            raise ValueError(f"{channels} channels do not split into {self.num_groups} groups")
        scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        y = group_norm(x, scale, bias, self.num_groups, self.epsilon, self.per_channel)
        return y.astype(self.dtype or jnp.result_type(x, scale))


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of t: [sin(2 pi t W), cos(2 pi t W)], W ~ N(0, scale^2).

    W is fixed, not trained (as in the seed). It is a constant of the module, not
    a parameter, so the optimizer (and its weight decay) never touches it; the
    fixed seed makes every instance use the same frequencies.
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
        norm = functools.partial(GroupNorm, dtype=self.dtype, per_channel=not train)
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
        embed = nn.Embed(self.num_classes + 1, self.num_tokens * self.features, dtype=self.dtype)
        return embed(labels).reshape(labels.shape[0], self.num_tokens, self.features)


def resize_to(x: jax.Array, height: int, width: int) -> jax.Array:
    """Nearest-neighbour resize of an NHWC map to (height, width)."""
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), method="nearest")


def upsample2x_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Nearest 2x upsampling of NHWC `x`, then a 3x3 SAME convolution with the
    HWIO `kernel` (no bias), computed on `x` itself.

    The same function as `resize_to(x, 2h, 2w)` followed by
    `flax.linen.Conv(features, (3, 3))`, at 4/9 of the multiply-adds (plus a
    border): output row 2i+a sees upsampled rows 2i+a-1..2i+a+1, which are x
    rows (i-1, i, i) for a=0 and (i, i, i+1) for a=1, so each of the four
    output phases (a, b) is a 2x2 convolution of `x` with taps of `kernel`
    summed. The four phase kernels run as one convolution of the padded `x`
    with 4x the output channels, and the phases are interleaved after.
    """
    n, h, w, _ = x.shape
    out = kernel.shape[-1]

    def two_taps(k, axis):  # Phase 0's and phase 1's taps along one axis of a 3-tap kernel.
        k0, k1, k2 = (jnp.take(k, i, axis=axis) for i in range(3))
        return jnp.stack([k0, k1 + k2], axis), jnp.stack([k0 + k1, k2], axis)

    phase_kernels = [col for row in two_taps(kernel, 0) for col in two_taps(row, 1)]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = jax.lax.conv_general_dilated(
        padded,
        jnp.concatenate(phase_kernels, axis=-1),
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    # Phase (a, b) of output pixel (i, j) is y[i + a, j + b] in that phase's channels.
    rows = []
    for a in (0, 1):
        cols = [
            y[:, a : a + h, b : b + w, (2 * a + b) * out : (2 * a + b + 1) * out] for b in (0, 1)
        ]
        rows.append(jnp.stack(cols, axis=3))
    return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, out)


def _is_plain_nhwc_conv(
    lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, precision
) -> bool:
    """Whether `lax.conv_general_dilated`'s arguments name an NHWC/HWIO convolution
    with no dilation, no groups and the default precision."""
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    return (
        all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
        and feature_group_count == 1
        and precision is None
        and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
    )


def upsample2x_conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
) -> jax.Array:
    """`upsample2x_conv` behind `lax.conv_general_dilated`'s signature, for
    `flax.linen.Conv(features, (3, 3), conv_general_dilated=...)` applied to the
    map before upsampling: the layer keeps flax's parameters (and so its
    checkpoints). Only a 3x3 NHWC SAME convolution with stride 1, no dilation,
    no groups and the default precision is accepted."""
    plain = _is_plain_nhwc_conv(
        lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, precision
    )
    if padding != "SAME" or rhs.shape[:2] != (3, 3) or tuple(window_strides) != (1, 1) or not plain:
        raise ValueError(
            "upsample2x_conv takes a 3x3 NHWC SAME convolution with stride 1, no dilation, "
            f"groups or precision, not a {rhs.shape[:2]} kernel, padding={padding!r} "
            f"strides={window_strides} dilations={lhs_dilation},{rhs_dilation} "
            f"groups={feature_group_count} precision={precision}"
        )
    return upsample2x_conv(lhs, rhs)


def resize_and_conv(
    x: jax.Array, height: int, width: int, features: int, dtype: Dtype
) -> jax.Array:
    """Nearest resize of NHWC `x` to (height, width), then a 3x3 SAME `nn.Conv`.

    Call inside a compact method: the conv is a submodule. An exact 2x resize
    runs the two as `upsample2x_conv`, with the same parameters.
    """
    if (height, width) == (2 * x.shape[1], 2 * x.shape[2]):
        conv = nn.Conv(
            features, (3, 3), dtype=dtype, conv_general_dilated=upsample2x_conv_general_dilated
        )
        return conv(x)
    return nn.Conv(features, (3, 3), dtype=dtype)(resize_to(x, height, width))


# The seed net's convolutions. Its encoder's VALID strided convs and its
# decoder's transposed convs are adjoint to each other, and differentiating one
# gives the other; XLA picks slow forms for some of what that produces:
#  - the kernel gradient of `lax.conv_transpose` is a convolution of the
#    input-dilated activations, which XLA runs as a slow generic convolution;
#  - XLA:GPU hands a transposed conv to cuDNN's backward-data kernel only when
#    the kernel is visibly reversed, and a kernel gradient to backward-filter
#    only when no input is dilated;
#  - XLA:CPU runs a transposed conv from a 2x2 map (an input-dilated conv:
#    the seed's deepest level, both as the decoder's first layer and as the
#    input gradient of the encoder's last conv) at a fifteenth of its usual
#    rate: 21.7 ms at batch 64, where the same work as one matmul and an
#    overlap-add takes 1.4 ms (benchmarks/conv_transpose.py).
# So a transposed conv is computed as the adjoint of a strided conv, with the
# adjoint's form chosen per platform (`_conv_adjoint`), and each layer's
# derivative rule is written so that reverse mode (training) transposes it into
# the forms above and forward mode (the likelihood's jvp) evaluates no
# transposed conv from a 2x2 map either (`conv_transpose`, `strided_conv`).

# The largest map side from which XLA:CPU's dilated convolution is slow (see above):
# the derivative rules below use the matmul forms from or to maps this small.
_SLOW_DILATED_SIDE = 2

# The forward convolution a transposed convolution is the input gradient of. Its
# kernel is laid out (h, w, out, in) so that it has the transposed conv's own
# (h, w, in, out) shape.
_FORWARD_CONV_DIMS = ("NHWC", "HWOI", "NHWC")


def _forward_conv(y: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        y, w, (stride, stride), "VALID", dimension_numbers=_FORWARD_CONV_DIMS
    )


def _transpose_of_conv(x: jax.Array, w: jax.Array, stride: int, out_shape: tuple) -> jax.Array:
    """x through the transpose of `_forward_conv(., w)`: linear in x."""
    spec = jax.ShapeDtypeStruct(out_shape, x.dtype)
    return jax.linear_transpose(lambda y: _forward_conv(y, w, stride), spec)(x)[0]


def _overlap_add(x: jax.Array, w: jax.Array, stride: int, out_shape: tuple) -> jax.Array:
    """`_transpose_of_conv` as XLA:CPU runs it fast: one matmul gives each input
    pixel's contribution to each kernel tap, `taps[i, j, a, b]`, which lands
    on output pixel (stride * i + a, stride * j + b). Those are summed per
    output phase (row and column mod stride) on the input-sized grid, and the
    phases interleaved, so the full-size output is written once."""
    n, height, width = x.shape[:3]
    kh, kw, _, channels = w.shape
    taps = jax.lax.dot_general(x, w, (((3,), (2,)), ((), ())))  # (n, h, w, kh, kw, channels)
    rows, cols = -(-out_shape[1] // stride), -(-out_shape[2] // stride)  # phase grid
    zero = jnp.zeros((), x.dtype)
    phases = []
    for r in range(stride):
        phase_row = []
        for c in range(stride):
            acc = jnp.zeros((n, rows, cols, channels), x.dtype)
            for a in range(r, kh, stride):
                for b in range(c, kw, stride):
                    t, u = (a - r) // stride, (b - c) // stride  # shift on the phase grid
                    pads = [
                        (0, 0, 0),
                        (t, rows - height - t, 0),
                        (u, cols - width - u, 0),
                        (0, 0, 0),
                    ]
                    acc = acc + jax.lax.pad(taps[:, :, :, a, b], zero, pads)
            phase_row.append(acc)
        phases.append(jnp.stack(phase_row, axis=3))  # (n, rows, cols, c, channels)
    interleaved = jnp.stack(phases, axis=2).reshape(n, rows * stride, cols * stride, channels)
    return interleaved[:, : out_shape[1], : out_shape[2]]


def _conv_adjoint(x: jax.Array, w: jax.Array, stride: int, out_shape: tuple) -> jax.Array:
    """`_transpose_of_conv` in the form each platform runs fast: on CPU
    `_overlap_add`; elsewhere the convolution XLA:GPU hands to cuDNN's
    backward-data kernel."""
    return jax.lax.platform_dependent(
        x,
        w,
        cpu=functools.partial(_overlap_add, stride=stride, out_shape=out_shape),
        default=functools.partial(_transpose_of_conv, stride=stride, out_shape=out_shape),
    )


def _transpose_of_conv_in_kernel(
    x: jax.Array, dw: jax.Array, stride: int, out_shape: tuple
) -> jax.Array:
    """The same map as a linear function of the kernel, written as the transpose
    of the forward conv's kernel gradient, so that reverse mode transposes it
    back into that kernel gradient."""
    spec = jax.ShapeDtypeStruct(out_shape, x.dtype)

    def kernel_gradient(dy):
        return jax.linear_transpose(lambda w: _forward_conv(dy, w, stride), dw)(x)[0]

    return jax.linear_transpose(kernel_gradient, spec)(dw)[0]


def _flip(kernel: jax.Array) -> jax.Array:
    # The barrier keeps XLA from cancelling this flip against the one in the
    # transposed conv: the GPU compiler recognises a cuDNN backward-data
    # convolution only when the kernel is visibly reversed.
    return jax.lax.optimization_barrier(jnp.flip(kernel, (0, 1)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def conv_transpose(
    x: jax.Array, kernel: jax.Array, stride: int, output_size: tuple[int, int]
) -> jax.Array:
    """VALID transposed convolution of NHWC `x` to `output_size`, as the seed's layer.

    The same function as `flax.linen.ConvTranspose(padding="VALID")` with
    `kernel` (h, w, in, out), zero-padded at the end to `output_size`
    (PyTorch's `output_padding`). It is computed as the adjoint of a strided
    convolution, in the form each platform runs fast, with its own derivative
    rule: on GPU the forward pass has the form XLA hands to cuDNN's
    backward-data convolution and the kernel gradient the form it hands to
    backward-filter, as PyTorch runs them; on CPU the forward pass is a matmul
    and an overlap-add (see the comment above `_forward_conv` for why, and
    benchmarks/conv_transpose.py for the speed). Forward and reverse mode both
    work.
    """
    return _conv_adjoint(x, _flip(kernel), stride, _out_shape(x, kernel, stride, output_size))


def _out_shape(x, kernel, stride, output_size) -> tuple:
    height, width = output_size
    for size, in_size, k in zip((height, width), x.shape[1:3], kernel.shape[:2], strict=True):
        smallest = stride * (in_size - 1) + k
        if not smallest <= size < smallest + stride:
            raise ValueError(
                f"a stride-{stride} transposed {k}x{k} conv of size {in_size} gives "
                f"{smallest}..{smallest + stride - 1}, not {size}"
            )
    return (x.shape[0], height, width, kernel.shape[-1])


def _conv_transpose_jvp(stride, output_size, primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    out_shape = _out_shape(x, kernel, stride, output_size)
    w = _flip(kernel)
    y = _conv_adjoint(x, w, stride, out_shape)
    parts = []
    if not isinstance(dx, SymbolicZero):
        # Linear in dx: forward mode evaluates this form, reverse mode its transpose.
        # `_transpose_of_conv` transposes to the forward conv, fast everywhere, but
        # XLA:CPU evaluates it slowly from a 2x2 map (benchmarks/conv_transpose.py,
        # jvp of 2->5: 1.3 ms this way, 21.5 as lax's dilated conv), where both
        # transpose equally fast. From larger maps the transpose of the CPU's
        # overlap-add took 1.5x as long in reverse mode (12->26), so training keeps
        # the forward conv there.
        small = max(x.shape[1:3]) <= _SLOW_DILATED_SIDE
        tangent = _conv_adjoint if small else _transpose_of_conv
        parts.append(tangent(dx, w, stride, out_shape))
    if not isinstance(dkernel, SymbolicZero):
        parts.append(_transpose_of_conv_in_kernel(x, jnp.flip(dkernel, (0, 1)), stride, out_shape))
    return y, sum(parts) if parts else jnp.zeros_like(y)


conv_transpose.defjvp(_conv_transpose_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def strided_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """VALID convolution of NHWC `x` with an HWIO `kernel` at `stride`, no bias.

    The same function as `flax.linen.Conv(padding="VALID", use_bias=False)`;
    to a 2x2 output its input gradient is computed as `conv_transpose` computes
    its value (see the comment above `_forward_conv`). Forward and reverse mode
    both work.
    """
    return _conv(x, kernel, stride)


def _conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    # As flax's nn.Conv lays it out: inside a loop XLA:CPU runs its fast
    # convolution only on this kernel layout (the transposed one took 15x as
    # long in a sampling scan).
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _strided_conv_jvp(stride, primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    y = _conv(x, kernel, stride)
    parts = []
    if not isinstance(dx, SymbolicZero):
        if max(y.shape[1:3]) <= _SLOW_DILATED_SIDE:
            # Written as the transpose of the input gradient, so that reverse mode
            # runs `_conv_adjoint` (XLA's own input gradient is the slow dilated
            # convolution from a 2x2 map).
            spec = jax.ShapeDtypeStruct(y.shape, x.dtype)
            w = kernel.transpose(0, 1, 3, 2)
            input_gradient = lambda dy: _conv_adjoint(dy, w, stride, x.shape)  # noqa: E731
            parts.append(jax.linear_transpose(input_gradient, spec)(dx)[0])
        else:
            # The convolution itself: forward mode runs it as fast as the value,
            # and XLA's transpose of it is fast from larger maps.
            parts.append(_conv(dx, kernel, stride))
    if not isinstance(dkernel, SymbolicZero):
        parts.append(_conv(x, dkernel, stride))
    return y, sum(parts) if parts else jnp.zeros_like(y)


strided_conv.defjvp(_strided_conv_jvp, symbolic_zeros=True)


def strided_conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
) -> jax.Array:
    """`strided_conv` behind `lax.conv_general_dilated`'s signature, for
    `flax.linen.Conv(..., conv_general_dilated=...)`: a layer keeps flax's
    parameters (and so its checkpoints). Only what `strided_conv` computes,
    an NHWC VALID convolution with equal strides, no dilation, no groups and
    the default precision, is accepted."""
    plain = _is_plain_nhwc_conv(
        lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, precision
    )
    if padding != "VALID" or len(set(window_strides)) != 1 or not plain:
        raise ValueError(
            "strided_conv takes an NHWC VALID convolution with equal strides, no "
            f"dilation, groups or precision, not padding={padding!r} strides={window_strides} "
            f"dilations={lhs_dilation},{rhs_dilation} groups={feature_group_count} "
            f"precision={precision}"
        )
    return strided_conv(lhs, rhs, window_strides[0])


class ConvTranspose(nn.Module):
    """The seed's transposed convolution (VALID, no bias) to a given output size.

    Same parameter as `flax.linen.ConvTranspose` ("kernel", (h, w, in, out),
    LeCun-normal), and so the same parameter path and checkpoints; computed by
    `conv_transpose`.
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
        return conv_transpose(
            x.astype(self.dtype), kernel.astype(self.dtype), self.stride, tuple(output_size)
        )
