"""Score networks: output shapes, and parameter counts re-derived layer by layer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import cifar10, fashion_mnist, mnist
from jaxdiff.data import dataset_info
from jaxdiff.errors import UserError
from jaxdiff.models import create_model, make_score_fn
from jaxdiff.models.layers import GaussianFourierProjection
from jaxdiff.sde import VESDE, VPSDE, SubVPSDE


def init_shapes(model, image_shape, batch=2):
    """Parameter shapes and output shape, traced abstractly (no FLOPs)."""
    x, t = jnp.zeros((batch, *image_shape)), jnp.ones((batch,))
    params = jax.eval_shape(model.init, jax.random.key(0), x, t)["params"]
    out = jax.eval_shape(lambda p: model.apply({"params": p}, x, t), params)
    return params, out.shape


def count(params):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def dense(n_in, n_out):
    return n_in * n_out + n_out


def conv(n_in, n_out, k=3, bias=True):
    return k * k * n_in * n_out + (n_out if bias else 0)


def norm(c):
    return 2 * c


def expected_seed_params(channels, embed, image_channels):
    """The seed net: bias-free convs, a dense per level, GroupNorm; decoder mirrors it."""
    total = dense(embed, embed)  # time embedding
    c_in = image_channels
    for c in channels:  # encoder
        total += conv(c_in, c, bias=False) + dense(embed, c) + norm(c)
        c_in = c
    for c_out in reversed(channels[:-1]):  # decoder levels with skips
        total += conv(c_in, c_out, bias=False) + dense(embed, c_out) + norm(c_out)
        c_in = c_out
    return total + conv(c_in, image_channels, bias=True)  # output layer


def expected_unet_params(channels, blocks, attn_sides, side, embed, image_channels):
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

    def attn(c):
        return norm(c) + dense(c, 3 * c) + dense(c, c)

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
    image_shape, _ = dataset_info(config.data.dataset)
    model = create_model(config.model, image_shape)
    params, out_shape = init_shapes(model, image_shape)
    assert out_shape == (2, *image_shape)
    m = config.model
    if m.name.startswith("seed_unet"):
        expected = expected_seed_params(m.channels, m.embed_dim, image_shape[-1])
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


def test_seed_net_has_the_published_size_in_both_upsampling_variants():
    config = mnist.get_config()
    for name in ("seed_unet", "seed_unet_resize"):
        config.model.name = name
        params, out_shape = init_shapes(create_model(config.model, (28, 28, 1)), (28, 28, 1))
        assert count(params) == 1_022_849  # about 1.02M, as the original
        assert out_shape == (2, 28, 28, 1)


def test_seed_net_transposed_convs_reach_every_skip_size_on_cifar():
    config = mnist.get_config()
    config.model.name = "seed_unet"
    _, out_shape = init_shapes(create_model(config.model, (32, 32, 3)), (32, 32, 3))
    assert out_shape == (2, 32, 32, 3)


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


def test_unet_dropout_only_in_training():
    config = fashion_mnist.get_config()
    config.model.channels = (8, 16, 16)
    config.model.embed_dim = 16
    config.model.dropout = 0.5
    model = create_model(config.model, (28, 28, 1))
    x, t = jax.random.normal(jax.random.key(0), (2, 28, 28, 1)), jnp.full((2,), 0.5)
    variables = model.init(jax.random.key(0), x, t)
    # Zero-initialised output conv: perturb it so dropout can show in the output.
    params = jax.tree.map(lambda p: p + 0.01, variables["params"])
    evaluate = lambda train, key: model.apply(  # noqa: E731
        {"params": params}, x, t, train=train, rngs={"dropout": key}
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
        (dict(name="resnet"), (28, 28, 1), r"unknown model.name 'resnet'.*seed_unet"),
        (
            dict(name="unet", channels=(8, 8, 8, 8)),
            (28, 28, 1),
            r"28x28 does not fit.*divisible by 8",
        ),
        (dict(name="seed_unet", channels=(8, 8, 8)), (28, 28, 1), r"has 4 levels"),
        (dict(name="seed_unet"), (12, 12, 1), r"too small"),
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
    def __call__(self, x, t, train=False):
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


def test_seed_parametrisation_divides_by_std():
    sde = VESDE()
    config = ml_collections.ConfigDict(dict(preconditioning="none", sigma_data=0.5))
    score_fn = make_score_fn(ConstantNet(2.0), {}, sde, config)
    t = jnp.asarray([0.1, 0.9])
    np.testing.assert_allclose(
        score_fn(jnp.zeros((2, 2, 2, 1)), t)[:, 0, 0, 0], 2.0 / sde.marginal_std(t), rtol=1e-6
    )
