"""Convolutions of the networks, in the forms XLA runs fast.

Each function computes what a flax layer computes (`flax.linen.ConvTranspose`,
`flax.linen.Conv`, or a nearest resize followed by `flax.linen.Conv`), with
the same kernel layout, so the layers keep flax's parameters and checkpoints.
The `*_conv_general_dilated` functions put them behind
`lax.conv_general_dilated`'s signature, for `flax.linen.Conv(...,
conv_general_dilated=...)`. Why each form exists is below; the measurements
are in docs/performance.md and the benchmarks named there.

The small U-Net's encoder has VALID strided convs and its decoder transposed
convs. They are adjoint to each other, and differentiating one gives the
other; XLA picks slow forms for some of what that produces:
 - the kernel gradient of `lax.conv_transpose` is a convolution of the
   input-dilated activations, which XLA runs as a slow generic convolution;
 - XLA:GPU hands a transposed conv to cuDNN's backward-data kernel only when
   the kernel is visibly reversed, and a kernel gradient to backward-filter
   only when no input is dilated;
 - XLA:CPU runs a transposed conv from a 2x2 map (an input-dilated conv: the
   small U-Net's deepest level, both as the decoder's first layer and as the input
   gradient of the encoder's last conv) far below its usual rate, where the
   same work as one matmul and an overlap-add is fast
   (docs/design.md).
So a transposed conv is computed as the adjoint of a strided conv, with the
adjoint's form chosen per platform (`_conv_adjoint`), and each derivative rule
is written so that reverse mode (training) transposes it into the forms above
and forward mode (the likelihood's jvp) evaluates no transposed conv from a
2x2 map either (`conv_transpose`, `strided_conv`).
"""

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

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
    """VALID transposed convolution of NHWC `x` to `output_size`, as `SmallUNet`'s layer.

    The same function as `flax.linen.ConvTranspose(padding="VALID",
    use_bias=False)` with `kernel` (h, w, in, out), zero-padded at the end to
    `output_size` (PyTorch's `output_padding`). It is computed as the adjoint
    of a strided convolution, in the form each platform runs fast, with its
    own derivative rule: on GPU the forward pass has the form XLA hands to
    cuDNN's backward-data convolution and the kernel gradient the form it
    hands to backward-filter, as PyTorch runs them; on CPU the forward pass is
    a matmul and an overlap-add (see the module docstring for why). Forward
    and reverse mode both work.

    Raises:
      ValueError: for an `output_size` a stride-`stride` transposed conv of
        `x` does not reach.
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
        # XLA:CPU evaluates it slowly from a 2x2 map, where both forms transpose
        # equally fast. From larger maps the transpose of the CPU's overlap-add is
        # the slower one in reverse mode, so training keeps the forward conv there
        # (docs/design.md).
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
    its value (see the module docstring). Forward and reverse mode both work.
    """
    return _conv(x, kernel, stride)


def _conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    # As flax's nn.Conv lays it out: inside a loop (a sampler's scan) XLA:CPU
    # runs its fast convolution only on this kernel layout, and a generic, much
    # slower one on the transposed layout.
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


def upsample2x_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Nearest 2x upsampling of NHWC `x`, then a 3x3 SAME convolution with the
    HWIO `kernel` (no bias), computed on `x` itself.

    The same function as a nearest resize to (2h, 2w) followed by
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


def resize_conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    *,
    size: tuple[int, int],
) -> jax.Array:
    """A nearest resize of NHWC `lhs` to `size` (height, width), then
    `lax.conv_general_dilated` with the other arguments.

    For `flax.linen.Conv(features, (3, 3), conv_general_dilated=
    functools.partial(resize_conv_general_dilated, size=size))` applied to the
    map before resizing: the layer keeps flax's parameters. An exact 2x resize
    is computed as `upsample2x_conv` (and takes what
    `upsample2x_conv_general_dilated` takes); any other as the resize, then the
    convolution. `lhs` is NHWC, as `dimension_numbers` must say.
    """
    args = (window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers)
    kwargs = dict(feature_group_count=feature_group_count, precision=precision)
    if tuple(size) == (2 * lhs.shape[1], 2 * lhs.shape[2]):
        return upsample2x_conv_general_dilated(lhs, rhs, *args, **kwargs)
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    if jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc:
        raise ValueError(f"resize_conv takes NHWC maps, not dimension_numbers={dimension_numbers}")
    resized = jax.image.resize(lhs, (lhs.shape[0], *size, lhs.shape[-1]), method="nearest")
    return jax.lax.conv_general_dilated(resized, rhs, *args, **kwargs)


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
