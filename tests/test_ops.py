"""The low-level operations (jaxdiff.ops) against flax's layers and numpy
references, in value and both derivatives, and the forms they lower to; and
checkpoints written before jaxdiff.ops existed, loaded by the current networks."""

import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import ClosedJaxpr, Jaxpr
from jaxdiff.configs import mnist

from jaxdiff import ops
from jaxdiff.models import create_model
from jaxdiff.models.layers import ConvTranspose, GroupNorm, resize_to
from jaxdiff.ops import conv as conv_ops

from .conftest import load_script


def _load_checkpoint_maker():
    """tests/data/checkpoint_before_ops/make_checkpoint.py, as a module: the small
    networks, their inputs and what is compared."""
    path = pathlib.Path(__file__).parent / "data" / "checkpoint_before_ops" / "make_checkpoint.py"
    return load_script(path)


make_checkpoint = _load_checkpoint_maker()


def numpy_conv_transpose(x, kernel, stride, size):
    """Flax's VALID transposed conv by its definition: input pixel i adds its
    kernel-weighted values at stride * i + a, with the kernel flipped, then
    zeros to `size` (PyTorch's output_padding)."""
    n, h, w, _ = x.shape
    k = kernel.shape[0]
    y = np.zeros((n, *size, kernel.shape[-1]))
    flipped = kernel[::-1, ::-1]
    for i in range(h):
        for j in range(w):
            patch = np.einsum("nc,abco->nabo", x[:, i, j], flipped)
            y[:, stride * i : stride * i + k, stride * j : stride * j + k] += patch
    return y


# Three of the small U-Net decoder's transposed convs (input side, stride, output side),
# fewer channels: from 2x2 (its own tangent form on CPU), stride 2 with PyTorch's
# output_padding, and stride 1.
@pytest.mark.parametrize("side,stride,size", [(2, 2, 5), (5, 2, 12), (26, 1, 28)])
def test_transposed_conv_is_flax_conv_transpose_in_value_and_both_derivatives(side, stride, size):
    x = jax.random.normal(jax.random.key(1), (2, side, side, 3))
    layer = ConvTranspose(4, stride=stride)
    params = layer.init(jax.random.key(0), x, (size, size))

    def flax_layer(params, x):  # The reference: flax's layer, padded at the end.
        h = nn.ConvTranspose(4, (3, 3), (stride, stride), "VALID", use_bias=False).apply(params, x)
        return jnp.pad(h, ((0, 0), (0, size - h.shape[1]), (0, size - h.shape[2]), (0, 0)))

    # Same parameter (so the same checkpoints) and the same function.
    flax_params = nn.ConvTranspose(4, (3, 3), (stride, stride), "VALID", use_bias=False).init(
        jax.random.key(0), x
    )
    np.testing.assert_array_equal(params["params"]["kernel"], flax_params["params"]["kernel"])
    ours = lambda params, x: layer.apply(params, x, (size, size))  # noqa: E731
    y = ours(params, x)
    kernel = np.asarray(params["params"]["kernel"], np.float64)
    np.testing.assert_allclose(
        y, numpy_conv_transpose(np.asarray(x, np.float64), kernel, stride, (size, size)), atol=1e-5
    )
    # Reverse mode (training) and forward mode (likelihood's jvp) agree with flax's.
    cotangent = jax.random.normal(jax.random.key(2), y.shape)
    grads = jax.grad(lambda p, x: jnp.vdot(ours(p, x), cotangent), (0, 1))(params, x)
    ref = jax.grad(lambda p, x: jnp.vdot(flax_layer(p, x), cotangent), (0, 1))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grads, ref)
    tangents = (jax.tree.map(jnp.ones_like, params), jax.random.normal(jax.random.key(3), x.shape))
    _, jvp = jax.jvp(ours, (params, x), tangents)
    _, ref_jvp = jax.jvp(flax_layer, (params, x), tangents)
    np.testing.assert_allclose(jvp, ref_jvp, rtol=1e-5, atol=1e-5)


# The small U-Net decoder's 2->5 (where XLA:CPU's dilated convolution is slow), and
# 5->12 with output padding.
@pytest.mark.parametrize("side,stride,size", [(2, 2, 5), (5, 2, 12)])
@pytest.mark.parametrize("form", ["_overlap_add", "_transpose_of_conv"])
def test_both_platform_forms_of_the_transposed_conv_are_its_definition(form, side, stride, size):
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, side, side, 3)))
    kernel = np.asarray(jax.random.normal(jax.random.key(2), (3, 3, 3, 4)))
    # Both forms take the kernel of the forward conv they are the adjoint of.
    # At full float32 precision: GPUs multiply float32 as TF32 by default.
    with jax.default_matmul_precision("highest"):
        y = getattr(conv_ops, form)(x, kernel[::-1, ::-1], stride, (2, size, size, 4))
    expected = numpy_conv_transpose(x.astype(np.float64), kernel, stride, (size, size))
    np.testing.assert_allclose(y, expected, atol=1e-5)


def _convolutions(lowered_text):
    return [line for line in lowered_text.splitlines() if "stablehlo.convolution" in line]


def test_transposed_conv_lowers_for_gpu_to_the_convolutions_cudnn_runs_fast():
    """Forward: a reversed kernel over the dilated input (cuDNN backward data);
    kernel gradient: no dilated input (cuDNN backward filter). Written as a
    plain `lax.conv_transpose`, the kernel gradient convolves the dilated input."""
    x, layer = jnp.ones((2, 12, 12, 3)), ConvTranspose(4, stride=2)
    params = layer.init(jax.random.key(0), x, (26, 26))

    def for_gpu(fn, *args):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()

    forward = for_gpu(lambda p: layer.apply(p, x, (26, 26)), params)
    convs = _convolutions(forward)
    assert len(convs) == 1 and "lhs_dilate = [2, 2]" in convs[0]
    kernel_operand = re.search(r"convolution\(%\w+, (%\w+)\)", convs[0]).group(1)
    assert f"{kernel_operand} = stablehlo.reverse" in forward
    loss = lambda p, x: jnp.sum(layer.apply(p, x, (26, 26)) ** 2)  # noqa: E731
    backward = _convolutions(for_gpu(jax.grad(loss, (0, 1)), params, x))
    assert len(backward) == 3  # forward, input gradient, kernel gradient
    assert sum("lhs_dilate = [1, 1]" in line for line in backward) == 2


def test_small_net_has_no_dilated_convolution_from_a_2x2_map_on_cpu():
    """XLA:CPU runs input-dilated convolutions from a 2x2 map 15x slower than
    their work needs: on CPU the small U-Net's transposed conv from 2x2, the input
    gradient of its strided conv to 2x2 and their forward-mode tangents are
    matmuls and overlap-adds instead, in training and in the likelihood's jvp."""
    model = create_model(mnist.get_config().model, (28, 28, 1))
    x, t = jnp.ones((2, 28, 28, 1)), jnp.ones((2,))
    params = jax.eval_shape(model.init, jax.random.key(0), x, t)

    def loss(params, x):
        return jnp.sum(model.apply(params, x, t) ** 2)

    def jvp(params, x):
        return jax.jvp(lambda x: model.apply(params, x, t), (x,), (x,))

    for program in (jax.grad(loss, (0, 1)), jvp):
        lowered = jax.jit(program).trace(params, x).lower(lowering_platforms=("cpu",))
        convs = _convolutions(lowered.as_text())
        dilated = [
            line for line in convs if "lhs_dilate" in line and "lhs_dilate = [1, 1]" not in line
        ]
        assert convs
        # The input operand's shape: (tensor<NxHxWxC...>, kernel) -> output.
        sides = [re.search(r": \(tensor<\d+x(\d+)x(\d+)x", line).groups() for line in dilated]
        assert ("2", "2") not in sides, program


# The small U-Net encoder's deepest conv (5 -> 2, whose input gradient is a 2x2 -> 5x5
# transposed conv and has its own form on CPU) and the one before (12 -> 5), fewer channels.
@pytest.mark.parametrize("side", [5, 12])
def test_strided_conv_is_flax_conv_in_value_and_both_derivatives(side):
    x = jax.random.normal(jax.random.key(1), (2, side, side, 3))

    def conv(**kwargs):
        return nn.Conv(4, (3, 3), 2, "VALID", use_bias=False, **kwargs)

    ours = conv(conv_general_dilated=ops.strided_conv_general_dilated)
    params = ours.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, params, conv().init(jax.random.key(0), x))
    y = ours.apply(params, x)
    np.testing.assert_allclose(y, conv().apply(params, x), atol=1e-5)
    cotangent = jax.random.normal(jax.random.key(2), y.shape)
    grads = jax.grad(lambda p, x: jnp.vdot(ours.apply(p, x), cotangent), (0, 1))(params, x)
    ref = jax.grad(lambda p, x: jnp.vdot(conv().apply(p, x), cotangent), (0, 1))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grads, ref)
    tangents = (jax.tree.map(jnp.ones_like, params), jax.random.normal(jax.random.key(3), x.shape))
    _, jvp = jax.jvp(ours.apply, (params, x), tangents)
    _, ref_jvp = jax.jvp(conv().apply, (params, x), tangents)
    np.testing.assert_allclose(jvp, ref_jvp, rtol=1e-5, atol=1e-5)


def test_strided_conv_rejects_what_it_does_not_compute():
    strided = ops.strided_conv_general_dilated
    layer = nn.Conv(4, (3, 3), padding="SAME", conv_general_dilated=strided)
    with pytest.raises(ValueError, match="NHWC VALID convolution"):
        layer.init(jax.random.key(0), jnp.ones((1, 8, 8, 2)))


class _ResizeThenConv(nn.Module):
    """The reference: nearest 2x resize of the map, then flax's 3x3 SAME conv."""

    @nn.compact
    def __call__(self, x):
        return nn.Conv(5, (3, 3))(resize_to(x, 2 * x.shape[1], 2 * x.shape[2]))


# Square and oblong maps, even and odd sides (the U-Nets' 7 -> 14 among them).
@pytest.mark.slow  # over 8 s on 2 cores: the full suite's, not the fast tier's
@pytest.mark.parametrize("side", [(4, 4), (7, 3)])
def test_upsample2x_conv_is_resize_then_conv_in_value_and_both_derivatives(side):
    x = jax.random.normal(jax.random.key(1), (2, *side, 3))
    ours = nn.Conv(5, (3, 3), conv_general_dilated=ops.upsample2x_conv_general_dilated)
    params = ours.init(jax.random.key(0), x)
    reference = _ResizeThenConv()
    ref_params = reference.init(jax.random.key(0), x)
    # The same parameters (names and shapes) as flax's conv: checkpoints carry over.
    shapes = lambda tree: jax.tree.map(jnp.shape, tree)  # noqa: E731
    assert shapes(params["params"]) == shapes(ref_params["params"]["Conv_0"])
    as_ref = lambda p: {"params": {"Conv_0": p["params"]}}  # noqa: E731
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(4), a.shape), params)
    y = ours.apply(params, x)
    assert y.shape == (2, 2 * side[0], 2 * side[1], 5)
    np.testing.assert_allclose(y, reference.apply(as_ref(params), x), rtol=1e-5, atol=1e-5)
    cotangent = jax.random.normal(jax.random.key(2), y.shape)
    grads = jax.grad(lambda p, x: jnp.vdot(ours.apply(p, x), cotangent), (0, 1))(params, x)
    ref = jax.grad(lambda p, x: jnp.vdot(reference.apply(as_ref(p), x), cotangent), (0, 1))(
        params, x
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grads, ref)
    tangents = (jax.tree.map(jnp.ones_like, params), jax.random.normal(jax.random.key(3), x.shape))
    _, jvp = jax.jvp(ours.apply, (params, x), tangents)
    _, ref_jvp = jax.jvp(lambda p, x: reference.apply(as_ref(p), x), (params, x), tangents)
    np.testing.assert_allclose(jvp, ref_jvp, rtol=1e-5, atol=1e-5)


def test_upsample2x_conv_rejects_what_it_does_not_compute():
    layer = nn.Conv(4, (3, 3), 2, conv_general_dilated=ops.upsample2x_conv_general_dilated)
    with pytest.raises(ValueError, match="3x3 NHWC SAME convolution with stride 1"):
        layer.init(jax.random.key(0), jnp.ones((1, 8, 8, 2)))


# `group_norm` (what the networks run) and its two forms, each checked on its own.
GROUP_NORM_FORMS = ["group_norm", "group_norm_grouped", "group_norm_per_channel"]


def _numpy_group_norm(x, groups, scale, bias, eps=1e-6):
    """Two-pass reference: normalise each (image, group) over its pixels and channels."""
    x = np.asarray(x, np.float64)
    g = x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


# Maps with pixels off zero mean and unit variance; groups of several channels,
# and one channel per group (the classifier's instance norm).
@pytest.mark.slow  # over 8 s on 2 cores: the full suite's, not the fast tier's
@pytest.mark.parametrize("shape,groups", [((3, 5, 4, 12), 4), ((2, 3, 6, 8), 8), ((2, 7, 16), 2)])
@pytest.mark.parametrize("form", GROUP_NORM_FORMS)
def test_group_norm_is_flax_group_norm_in_value_and_both_derivatives(
    shape, groups, form, monkeypatch
):
    keys = jax.random.split(jax.random.key(0), 4)
    x = 3.0 + 2.0 * jax.random.normal(keys[0], shape) * jnp.arange(1, shape[-1] + 1) / shape[-1]
    monkeypatch.setattr(ops, "group_norm", getattr(ops, form))
    ours, reference = GroupNorm(groups), nn.GroupNorm(groups)
    params = ours.init(keys[1], x)
    # The same parameters (names and shapes) as flax's: checkpoints carry over.
    shapes = lambda tree: jax.tree.map(jnp.shape, tree)  # noqa: E731
    assert shapes(params) == shapes(reference.init(keys[1], x))
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(keys[2], a.shape), params)
    y = ours.apply(params, x)
    p = params["params"]
    np.testing.assert_allclose(
        y, _numpy_group_norm(x, groups, p["scale"], p["bias"]), rtol=1e-4, atol=1e-4
    )
    # Both compute the variance as E[x^2] - E[x]^2 in float32 (mean 3 here): they
    # differ from the float64 reference, and so from each other, by ~3e-5.
    np.testing.assert_allclose(y, reference.apply(params, x), rtol=1e-4, atol=1e-4)
    cotangent = jax.random.normal(keys[3], y.shape)
    grads = jax.grad(lambda p, x: jnp.vdot(ours.apply(p, x), cotangent), (0, 1))(params, x)
    ref = jax.grad(lambda p, x: jnp.vdot(reference.apply(p, x), cotangent), (0, 1))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grads, ref)
    tangents = (jax.tree.map(jnp.ones_like, params), cotangent.reshape(x.shape))
    _, jvp = jax.jvp(ours.apply, (params, x), tangents)
    _, ref_jvp = jax.jvp(reference.apply, (params, x), tangents)
    np.testing.assert_allclose(jvp, ref_jvp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("form", GROUP_NORM_FORMS)
def test_group_norm_in_bfloat16_keeps_float32_statistics_and_parameters(form, monkeypatch):
    x = 100.0 + jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    monkeypatch.setattr(ops, "group_norm", getattr(ops, form))
    ours = GroupNorm(4, dtype=jnp.bfloat16)
    reference = nn.GroupNorm(4, dtype=jnp.bfloat16)
    params = ours.init(jax.random.key(1), x.astype(jnp.bfloat16))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    y = ours.apply(params, x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    # A mean of 100 and unit spread: bfloat16 statistics would lose the spread.
    ref = reference.apply(params, x.astype(jnp.bfloat16)).astype(jnp.float32)
    np.testing.assert_allclose(y.astype(jnp.float32), ref, atol=0.05)
    assert float(jnp.std(y.astype(jnp.float32))) == pytest.approx(1.0, abs=0.05)


def test_transposed_conv_rejects_an_unreachable_size():
    x = jnp.ones((1, 5, 5, 2))
    with pytest.raises(ValueError, match=re.escape("gives 11..12, not 14")):
        ConvTranspose(3, stride=2).init(jax.random.key(0), x, (14, 14))


def test_resize_conv_is_resize_then_conv_at_any_size():
    """Inexact sizes (the U-Nets' 4 -> 7) resize, then convolve; 2x is `upsample2x_conv`."""
    x = jax.random.normal(jax.random.key(1), (2, 4, 3, 3))
    kernel = jax.random.normal(jax.random.key(2), (3, 3, 3, 5))
    nhwc = ("NHWC", "HWIO", "NHWC")
    for size in [(7, 5), (8, 6)]:
        y = ops.resize_conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=nhwc, size=size
        )
        resized = resize_to(x, *size)
        expected = jax.lax.conv_general_dilated(
            resized, kernel, (1, 1), "SAME", dimension_numbers=nhwc
        )
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="NHWC maps"):
        ops.resize_conv_general_dilated(x, kernel, (1, 1), "SAME", size=(7, 5))


def _name_stacks(jaxpr) -> set[str]:
    """The name stacks of every equation of a jaxpr, sub-jaxprs included."""
    stacks = set()
    for eqn in jaxpr.eqns:
        stacks.add(str(eqn.source_info.name_stack))
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple) else (param,):
                if isinstance(sub, ClosedJaxpr):
                    sub = sub.jaxpr
                if isinstance(sub, Jaxpr):
                    stacks |= _name_stacks(sub)
    return stacks


def _group_norm_forms(fn, *args) -> set[str]:
    """Which of the two group-norm forms the traced `fn(*args)` computes."""
    stacks = _name_stacks(jax.make_jaxpr(fn)(*args).jaxpr)
    forms = ("group_norm_grouped", "group_norm_per_channel")
    return {form for form in forms if any(form in stack for stack in stacks)}


def test_group_norm_evaluates_per_channel_and_differentiates_flax_form():
    """Evaluated, `group_norm` runs the per-channel form; under any derivative,
    flax's grouped form, for the value as well as the derivative."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 8))
    scale, bias = jnp.ones(8), jnp.zeros(8)

    def loss(x, scale, bias):
        return jnp.sum(ops.group_norm(x, scale, bias, 4) ** 2)

    assert _group_norm_forms(loss, x, scale, bias) == {"group_norm_per_channel"}
    assert _group_norm_forms(jax.value_and_grad(loss, (0, 1, 2)), x, scale, bias) == {
        "group_norm_grouped"
    }
    assert _group_norm_forms(jax.grad(loss), x, scale, bias) == {"group_norm_grouped"}
    jvp = lambda x: jax.jvp(lambda x: loss(x, scale, bias), (x,), (x,))  # noqa: E731
    assert _group_norm_forms(jvp, x) == {"group_norm_grouped"}
    # The value under the derivative is the grouped form's, bit for bit.
    (value, _), grouped = jvp(x), jnp.sum(ops.group_norm_grouped(x, scale, bias, 4) ** 2)
    np.testing.assert_array_equal(value, grouped)


@pytest.mark.slow  # over 8 s on 2 cores: the full suite's, not the fast tier's
@pytest.mark.parametrize("name", ["seed_unet", "unet_cond"])
def test_networks_sample_in_the_per_channel_form_and_train_in_flax_form(name):
    """The networks no longer choose: their sampling (train=False, no derivative)
    runs the per-channel form only; their training step (value_and_grad at
    train=True) and the likelihood's jvp run flax's form only."""
    model, (x, t, labels) = make_checkpoint.build_network(name)  # Small versions.
    params = jax.eval_shape(model.init, jax.random.key(0), x, t, labels)["params"]
    rngs = {"dropout": jax.random.key(1)}

    def apply(params, x, train):
        return model.apply({"params": params}, x, t, labels, train=train, rngs=rngs)

    train_loss = lambda p, x: jnp.mean(apply(p, x, True) ** 2)  # noqa: E731
    assert _group_norm_forms(lambda p, x: apply(p, x, False), params, x) == {
        "group_norm_per_channel"
    }
    assert _group_norm_forms(jax.value_and_grad(train_loss), params, x) == {"group_norm_grouped"}
    jvp = lambda p, x: jax.jvp(lambda x: apply(p, x, False), (x,), (x,))  # noqa: E731
    assert _group_norm_forms(jvp, params, x) == {"group_norm_grouped"}


def test_autoencoder_decodes_in_the_per_channel_form_and_trains_in_flax_form():
    """Its residual blocks once ran at train=True to get flax's form in stage one's
    training; now its training step differentiates into flax's form by itself,
    and encoding and decoding (latents, samples) evaluate the per-channel form."""
    model, x = make_checkpoint.build_autoencoder()
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    key = jax.random.key(1)

    def loss(params, x):
        reconstruction, _, _ = model.apply({"params": params}, x, key)
        return jnp.mean(jnp.abs(reconstruction - x))

    decode = lambda p, z: model.apply({"params": p}, z, method="decode")  # noqa: E731
    z = jax.eval_shape(lambda p: model.apply({"params": p}, x, method="encode")[0], params)
    z = jnp.zeros(z.shape, z.dtype)
    assert _group_norm_forms(decode, params, z) == {"group_norm_per_channel"}
    assert _group_norm_forms(jax.value_and_grad(loss), params, x) == {"group_norm_grouped"}


@pytest.fixture(scope="module")
def checkpoint():
    with np.load(make_checkpoint.CHECKPOINT) as arrays:
        return dict(arrays)


@pytest.mark.slow  # over 8 s on 2 cores: the full suite's, not the fast tier's
@pytest.mark.parametrize("name", [*make_checkpoint.NETWORKS, *make_checkpoint.OTHERS])
def test_checkpoints_written_before_ops_load_and_give_the_same_outputs(name, checkpoint):
    """tests/data/checkpoint_before_ops: small versions of every network, their
    parameters and outputs as the code before jaxdiff.ops computed them (see
    make_checkpoint.py). Same parameter tree (paths and shapes) as `init` makes
    now, and the same outputs from it: evaluated (train=False, the per-channel
    form before and now), at train=True (flax's form before, the per-channel
    form now: rounding apart), and their derivatives (training's gradients,
    flax's form before and now; the likelihood's jvp, per-channel before, flax's
    form now)."""
    entries, leaves = make_checkpoint.load(name, checkpoint)
    model, inputs = make_checkpoint.build(name)
    np.testing.assert_array_equal(inputs[0], checkpoint[f"{name}/x"].astype(np.float32))
    abstract = jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]
    assert make_checkpoint.manifest(abstract) == entries
    params = jax.tree.unflatten(jax.tree.structure(abstract), leaves)
    _, _, outputs = make_checkpoint.compute(name, params)
    for key, value in outputs.items():
        saved = checkpoint[f"{name}/out/{key}"]
        # Where the form changed (train, jvp_x) they differed by up to 8e-6 of the
        # largest value on the CPU; elsewhere by at most 6e-7, mostly not at all.
        atol = 3e-5 * float(np.abs(saved).max())
        np.testing.assert_allclose(value, saved, rtol=1e-5, atol=atol, err_msg=f"{name} {key}")
