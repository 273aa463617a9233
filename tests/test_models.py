"""Score networks: output shapes, and parameter counts re-derived layer by layer.

The low-level operations the layers are built on (jaxdiff.ops) are tested in
tests/test_ops.py.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jaxdiff.configs import (
    cifar10,
    cifar10_cond,
    fashion_mnist,
    fashion_mnist_cond,
    get_config,
    mnist,
    mnist_cond,
    mnist_original,
)

from jaxdiff.core.errors import UserError
from jaxdiff.data.datasets import dataset_info
from jaxdiff.diffusion.preconditioning import make_score_fn
from jaxdiff.diffusion.sde import VESDE, VPSDE, SubVPSDE
from jaxdiff.models import create_model, layers
from jaxdiff.models import unet as unet_module
from jaxdiff.models.layers import (
    GaussianFourierProjection,
    GroupNorm,
    MultiHeadAttention,
    SpatialTransformer,
)


def init_shapes(model, image_shape, batch=2):
    """Parameter shapes and output shape, traced abstractly (no FLOPs)."""
    x, t, y = jnp.zeros((batch, *image_shape)), jnp.ones((batch,)), jnp.zeros((batch,), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), x, t, y)["params"]
    out = jax.eval_shape(lambda p: model.apply({"params": p}, x, t, y), params)
    return params, out.shape


def count(params):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def dense(n_in, n_out):
    return n_in * n_out + n_out


def conv(n_in, n_out, k=3, bias=True):
    return k * k * n_in * n_out + (n_out if bias else 0)


def norm(c):
    return 2 * c


def expected_small_unet_params(channels, embed, image_channels):
    """The small U-Net: bias-free convs, a dense per level, GroupNorm; decoder mirrors it."""
    total = dense(embed, embed)  # time embedding
    c_in = image_channels
    for c in channels:  # encoder
        total += conv(c_in, c, bias=False) + dense(embed, c) + norm(c)
        c_in = c
    for c_out in reversed(channels[:-1]):  # decoder levels with skips
        total += conv(c_in, c_out, bias=False) + dense(embed, c_out) + norm(c_out)
        c_in = c_out
    return total + conv(c_in, image_channels, bias=True)  # output layer


def transformer_params(c, context_dim, ff_mult):
    """Spatial transformer: 3 LayerNorms, self-attn (q, k, v, out), cross-attn, GELU MLP."""
    self_attention = 4 * dense(c, c)
    cross_attention = 2 * dense(c, c) + 2 * dense(context_dim, c)
    return (
        3 * norm(c)
        + self_attention
        + cross_attention
        + dense(c, ff_mult * c)
        + dense(ff_mult * c, c)
    )


def expected_unet_params(channels, blocks, attn_sides, side, embed, image_channels, attn=None):
    def res(c_in, c_out):
        skip = conv(c_in, c_out, k=1) if c_in != c_out else 0
        return (
            norm(c_in)
            + conv(c_in, c_out)
            + dense(embed, c_out)
            + norm(c_out)
            + conv(c_out, c_out)
            + skip
        )

    def self_attention(c):
        return norm(c) + dense(c, 3 * c) + dense(c, c)

    attn = attn or self_attention

    total = dense(embed, embed) + conv(image_channels, channels[0])
    skip_channels, c_in, sides = [channels[0]], channels[0], []
    for level, c in enumerate(channels):
        sides.append(side)
        for _ in range(blocks):
            total += res(c_in, c) + (attn(c) if side in attn_sides else 0)
            c_in = c
            skip_channels.append(c)
        if level < len(channels) - 1:
            total += conv(c, c)
            skip_channels.append(c)
            side //= 2
    total += 2 * res(c_in, c_in) + attn(c_in)
    for level in reversed(range(len(channels))):
        c = channels[level]
        for _ in range(blocks + 1):
            total += res(c_in + skip_channels.pop(), c)
            total += attn(c) if sides[level] in attn_sides else 0
            c_in = c
        if level > 0:
            total += conv(c, c)
    return total + norm(c_in) + conv(c_in, image_channels)


@pytest.mark.parametrize("config_module", [mnist, fashion_mnist, cifar10])
def test_each_config_builds_its_net_with_the_expected_parameter_count(config_module):
    config = config_module.get_config()
    image_shape = dataset_info(config.data.dataset).image_shape
    model = create_model(config.model, image_shape)
    params, out_shape = init_shapes(model, image_shape)
    assert out_shape == (2, *image_shape)
    m = config.model
    if m.name.startswith("small_unet"):
        expected = expected_small_unet_params(m.channels, m.embed_dim, image_shape[-1])
    else:
        expected = expected_unet_params(
            m.channels,
            m.num_res_blocks,
            m.attention_resolutions,
            image_shape[0],
            m.embed_dim,
            image_shape[-1],
        )
    assert count(params) == expected


def test_small_net_has_the_published_size_in_both_upsampling_variants():
    config = mnist.get_config()
    for name in ("small_unet", "small_unet_resize"):
        config.model.name = name
        params, out_shape = init_shapes(create_model(config.model, (28, 28, 1)), (28, 28, 1))
        assert count(params) == 1_022_849  # about 1.02M, as the original
        assert out_shape == (2, 28, 28, 1)


def test_small_net_transposed_convs_reach_every_skip_size_on_cifar():
    config = mnist.get_config()
    config.model.name = "small_unet"
    _, out_shape = init_shapes(create_model(config.model, (32, 32, 3)), (32, 32, 3))
    assert out_shape == (2, 32, 32, 3)


def test_group_norm_refuses_channels_that_do_not_split_into_groups():
    with pytest.raises(ValueError, match="10 channels do not split into 4 groups"):
        GroupNorm(4).init(jax.random.key(0), jnp.ones((1, 2, 2, 10)))


def flax_group_norm(num_groups, dtype=None):
    """flax's GroupNorm, called as the networks call jaxdiff's."""
    return nn.GroupNorm(num_groups, dtype=dtype)


@pytest.mark.slow  # over 8 s on 2 cores: the full suite's, not the fast tier's
def test_networks_keep_flax_group_norm_parameter_names(monkeypatch):
    """Checkpoints written with flax's GroupNorm load into every network unchanged."""
    for config_module in (mnist, cifar10, cifar10_cond):
        config = config_module.get_config()
        info = dataset_info(config.data.dataset)
        image_shape, num_classes = info.image_shape, info.num_classes
        model = create_model(config.model, image_shape, num_classes=num_classes)
        ours = jax.tree.map(jnp.shape, init_shapes(model, image_shape)[0])
        with monkeypatch.context() as patch:
            for module in (layers, unet_module):
                patch.setattr(module, "GroupNorm", flax_group_norm)
            flax_shapes = jax.tree.map(jnp.shape, init_shapes(model, image_shape)[0])
        assert "GroupNorm_0" in str(jax.tree_util.tree_structure(ours))
        assert flax_shapes == ours


def test_fourier_features_are_fixed_and_not_trained():
    layer = GaussianFourierProjection(embed_dim=8, scale=30.0)
    t = jnp.asarray([0.0, 0.25, 1.0])
    variables = layer.init(jax.random.key(0), t)
    assert not jax.tree.leaves(variables)  # nothing for the optimizer to touch
    out = layer.apply({}, t)
    assert out.shape == (3, 8)
    np.testing.assert_allclose(out[0], [0.0] * 4 + [1.0] * 4, atol=1e-6)  # sin 0, cos 0
    np.testing.assert_allclose(layer.apply({}, t), out)
    assert float(jnp.abs(out[1] - out[2]).max()) > 0.1


@pytest.mark.slow  # over 8 s on 2 cores: the full suite's, not the fast tier's
def test_unet_dropout_only_in_training():
    config = fashion_mnist.get_config()
    config.model.channels = (8, 16, 16)
    config.model.embed_dim = 16
    config.model.dropout = 0.5
    model = create_model(config.model, (28, 28, 1))
    x, t = jax.random.normal(jax.random.key(0), (2, 28, 28, 1)), jnp.full((2,), 0.5)
    variables = jax.jit(model.init)(jax.random.key(0), x, t)
    # Zero-initialised output conv: perturb it so dropout can show in the output.
    params = jax.tree.map(lambda p: p + 0.01, variables["params"])
    evaluate = jax.jit(  # One compile per `train` instead of op-by-op dispatch.
        lambda train, key: model.apply(
            {"params": params}, x, t, train=train, rngs={"dropout": key}
        ),
        static_argnums=0,
    )
    np.testing.assert_array_equal(
        evaluate(False, jax.random.key(1)), evaluate(False, jax.random.key(2))
    )
    assert (
        float(jnp.abs(evaluate(True, jax.random.key(1)) - evaluate(True, jax.random.key(2))).max())
        > 0
    )


@pytest.mark.parametrize(
    "overrides, image_shape, message",
    [
        (dict(name="resnet"), (28, 28, 1), r"unknown model.name 'resnet'.*small_unet"),
        (
            dict(name="unet", channels=(8,) * 7),
            (28, 28, 1),
            r"28x28 is too small for model 'unet' with 7 levels",
        ),
        (dict(name="small_unet", channels=(8, 8, 8)), (28, 28, 1), r"has 4 levels"),
        (dict(name="seed_unet"), (12, 12, 1), r"too small for 'seed_unet'"),  # A former name.
    ],
)
def test_bad_model_settings_are_rejected(overrides, image_shape, message):
    config = mnist.get_config().model
    config.update(overrides)
    with pytest.raises(UserError, match=message):
        create_model(config, image_shape)


def test_model_dtype_is_compute_only():
    model = create_model(
        ml_collections.ConfigDict(mnist.get_config().model), (28, 28, 1), jnp.bfloat16
    )
    params, _ = init_shapes(model, (28, 28, 1))
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype("float32")}


class ConstantNet(nn.Module):
    """A stand-in network that outputs a constant, to test the parametrisations."""

    value: float = 0.0

    @nn.compact
    def __call__(self, x, t, labels=None, train=False):
        return jnp.full_like(x, self.value)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_edm_preconditioning_with_a_zero_network_is_the_gaussian_score(sde):
    config = ml_collections.ConfigDict(dict(preconditioning="edm", sigma_data=0.5))
    score_fn = make_score_fn(ConstantNet(0.0), {}, sde, config)
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 1))
    t = jnp.asarray([1e-3, 0.1, 0.5, 1.0])
    alpha, std = sde.mean_coeff(t)[:, None, None, None], sde.marginal_std(t)[:, None, None, None]
    # Data N(0, 0.5^2): p_t = N(0, alpha^2 0.25 + std^2).
    np.testing.assert_allclose(score_fn(x, t), -x / (alpha**2 * 0.25 + std**2), rtol=1e-4)


def test_unpreconditioned_score_divides_by_std():
    sde = VESDE()
    config = ml_collections.ConfigDict(dict(preconditioning="none", sigma_data=0.5))
    score_fn = make_score_fn(ConstantNet(2.0), {}, sde, config)
    t = jnp.asarray([0.1, 0.9])
    np.testing.assert_allclose(
        score_fn(jnp.zeros((2, 2, 2, 1)), t)[:, 0, 0, 0], 2.0 / sde.marginal_std(t), rtol=1e-6
    )


@pytest.mark.parametrize("config_module", [mnist_cond, fashion_mnist_cond, cifar10_cond])
def test_conditional_nets_add_transformers_and_class_tokens_to_the_unconditional_ones(
    config_module,
):
    config = config_module.get_config()
    m = config.model
    info = dataset_info(config.data.dataset)
    image_shape, num_classes = info.image_shape, info.num_classes
    params, out_shape = init_shapes(
        create_model(m, image_shape, num_classes=num_classes), image_shape
    )
    assert out_shape == (2, *image_shape)
    transformer = lambda c: transformer_params(c, m.context_dim, m.ff_mult)  # noqa: E731
    tokens = (num_classes + 1) * m.context_tokens * m.context_dim  # the null class included
    if m.name.startswith("small_unet"):
        sides = [26, 12, 5, 2]  # 28x28 images
        encoder = [
            c for c, side in zip(m.channels, sides, strict=True) if side in m.attention_resolutions
        ]
        decoder = [
            c
            for c, side in zip(m.channels[:-1], sides[:-1], strict=True)
            if side in m.attention_resolutions
        ]
        expected = expected_small_unet_params(m.channels, m.embed_dim, image_shape[-1])
        expected += sum(transformer(c) for c in encoder + decoder)
    else:
        expected = expected_unet_params(
            m.channels,
            m.num_res_blocks,
            m.attention_resolutions,
            image_shape[0],
            m.embed_dim,
            image_shape[-1],
            attn=transformer,
        )
    assert count(params) == expected + tokens


# GPUs multiply float32 matrices in TF32 by default (~1e-3 relative error): the
# reference comparisons ask for full float32 so they check the maths everywhere.
full_precision = jax.default_matmul_precision("highest")


def random_params(module, *inputs):
    """Parameters drawn N(0, 0.5^2): no zero-initialised layer hides an error."""
    # Only the shapes are needed: eval_shape traces init without running it op by op.
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(
        tree, [0.5 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)]
    )


def numpy_attention(p, x, context):
    """Naive multi-head softmax attention, head by head, in float64."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    q = np.einsum("bnc,chd->bnhd", x, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("blc,chd->blhd", context, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("blc,chd->blhd", context, p["value"]["kernel"]) + p["value"]["bias"]
    heads = []
    for h in range(q.shape[2]):
        logits = q[:, :, h] @ k[:, :, h].transpose(0, 2, 1) / np.sqrt(q.shape[-1])
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        heads.append(weights @ v[:, :, h])
    out = np.stack(heads, axis=2)  # (b, n, heads, head_dim)
    return np.einsum("bnhd,hdc->bnc", out, p["out"]["kernel"]) + p["out"]["bias"]


@full_precision
@pytest.mark.parametrize("num_heads", [1, 4])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_attention_matches_a_numpy_softmax_reference(num_heads, cross):
    x = np.asarray(jax.random.normal(jax.random.key(2), (3, 7, 16)), np.float64)
    context = (
        np.asarray(jax.random.normal(jax.random.key(3), (3, 5, 12)), np.float64) if cross else None
    )
    layer = MultiHeadAttention(num_heads)
    inputs = (jnp.asarray(x, jnp.float32),) + (
        (jnp.asarray(context, jnp.float32),) if cross else ()
    )
    params = random_params(layer, *inputs)
    out = layer.apply({"params": params}, *inputs)
    expected = numpy_attention(params, x, context if cross else x)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def numpy_layer_norm(p, x):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * np.asarray(p["scale"]) + np.asarray(p["bias"])


@pytest.mark.slow  # over 8 s on 2 cores: the full suite's, not the fast tier's
@full_precision
def test_spatial_transformer_matches_a_numpy_reference():
    x = np.asarray(jax.random.normal(jax.random.key(4), (2, 3, 3, 8)), np.float64)
    context = np.asarray(jax.random.normal(jax.random.key(5), (2, 4, 6)), np.float64)
    block = SpatialTransformer(num_heads=2, ff_mult=3)
    params = random_params(block, jnp.asarray(x, jnp.float32), jnp.asarray(context, jnp.float32))
    out = block.apply(
        {"params": params}, jnp.asarray(x, jnp.float32), jnp.asarray(context, jnp.float32)
    )

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    y = x.reshape(2, 9, 8)
    h = numpy_layer_norm(p["LayerNorm_0"], y)
    y = y + numpy_attention(p["MultiHeadAttention_0"], h, h)
    y = y + numpy_attention(
        p["MultiHeadAttention_1"], numpy_layer_norm(p["LayerNorm_1"], y), context
    )
    h = numpy_layer_norm(p["LayerNorm_2"], y) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))  # flax's gelu
    y = y + h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    np.testing.assert_allclose(out, y.reshape(2, 3, 3, 8), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # over 8 s on 2 cores: the full suite's, not the fast tier's
@pytest.mark.parametrize("config_module", [mnist_cond, fashion_mnist_cond])
def test_conditional_net_output_depends_on_the_label(config_module):
    config = config_module.get_config()
    small = config.model.name.startswith("small")
    config.model.channels = (8, 16, 16, 16) if small else (8, 16, 16)
    config.model.embed_dim = config.model.context_dim = 16
    config.model.num_heads = 2
    model = create_model(config.model, (28, 28, 1), num_classes=10)
    x, t = jax.random.normal(jax.random.key(0), (3, 28, 28, 1)), jnp.full((3,), 0.5)
    params = random_params(model, x, t, jnp.zeros(3, jnp.int32))
    # Jitted: one compile instead of op-by-op dispatch of the whole net per call.
    apply = jax.jit(lambda labels: model.apply({"params": params}, x, t, labels))
    out = lambda labels: apply(jnp.asarray(labels))  # noqa: E731
    same, other, null = out([1, 1, 1]), out([2, 2, 2]), out([10, 10, 10])
    np.testing.assert_array_equal(same, out([1, 1, 1]))
    assert float(jnp.abs(same - other).max()) > 1e-3
    assert float(jnp.abs(same - null).max()) > 1e-3
    # Each example sees only its own label.
    np.testing.assert_allclose(out([1, 2, 10])[1], other[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs labels"):
        model.apply({"params": params}, x, t)


def test_conditional_small_net_needs_an_attention_side_it_has():
    config = mnist_cond.get_config().model
    config.attention_resolutions = (7,)
    with pytest.raises(UserError, match=r"names none of .*\[26, 12, 5, 2\]"):
        create_model(config, (28, 28, 1), num_classes=10)


@pytest.mark.parametrize("variant", ["uncond", "cond"])
def test_mnist_original_config_is_the_original_net(variant):
    """configs/mnist_original.py, the twin of benchmarks/torch_reference.py (run.py compares
    counts); its former name, mnist_seed, gives the same config."""
    config = mnist_original.get_config(variant)
    former = "mnist_seed:cond" if variant == "cond" else "configs/mnist_seed.py"
    assert get_config(former) == config
    m = config.model
    num_classes = 10 if m.conditional else 0
    params, out_shape = init_shapes(
        create_model(m, (28, 28, 1), num_classes=num_classes), (28, 28, 1)
    )
    assert out_shape == (2, 28, 28, 1)
    assert (m.name, m.preconditioning) == ("small_unet", "none")
    expected = expected_small_unet_params(m.channels, m.embed_dim, 1)
    if m.conditional:
        # One 256-d token per class and the null one; transformers at 5x5 (128 channels,
        # encoder and decoder) and 2x2 (256 channels), feed-forward 3x wide.
        assert (m.context_tokens, m.num_heads, m.ff_mult) == (1, 1, 3)
        expected += 11 * 256 + 2 * transformer_params(128, 256, 3) + transformer_params(256, 256, 3)
    assert count(params) == expected == {"uncond": 1_022_849, "cond": 2_476_673}[variant]
