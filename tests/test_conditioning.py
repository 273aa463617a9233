"""Prompts, the null token's training rate, and classifier-free guidance."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdiff.core import parallel
from jaxdiff.core.errors import UserError
from jaxdiff.data import batches, datasets, tfds_reader
from jaxdiff.diffusion.conditioning import guided_score_fn, parse_prompt
from jaxdiff.diffusion.sde import VESDE
from jaxdiff.sampling import create_sampler
from jaxdiff.training.score import draw_training_batch

from .test_samplers import SAMPLERS, sampling_config


@pytest.mark.parametrize(
    "dataset, prompt, expected",
    [
        ("mnist", "7", [7]),
        ("mnist", "3,5", [3, 5]),
        ("mnist", "seven, Three ,0", [7, 3, 0]),
        ("fashion_mnist", "sneaker", [7]),
        ("fashion_mnist", "Ankle boot,ankle_boot,ANKLEBOOT,boot", [9, 9, 9, 9]),
        ("fashion_mnist", "T-shirt/top,tshirt,Shirt", [0, 0, 6]),
        ("fashion_mnist", "9", [9]),
        ("cifar10", "cat,dog,ship", [3, 5, 8]),
        ("cifar10", "truck,lorry,plane,car", [9, 9, 0, 1]),
        ("cifar10", "ALL", list(range(10))),
        ("cifar10", "", []),
        ("cifar10", " , ", None),
    ],
)
def test_prompt_parsing(dataset, prompt, expected):
    if expected is None:
        with pytest.raises(UserError, match="names no class"):
            parse_prompt(prompt, datasets.dataset_info(dataset))
    else:
        assert parse_prompt(prompt, datasets.dataset_info(dataset)) == expected


@pytest.mark.parametrize(
    "dataset, prompt, expected",
    [
        ("cifar10", "a photo of a cat", [3]),
        ("cifar10", "A CAT!", [3]),
        ("cifar10", "a red car, a ship at sea", [1, 8]),
        ("mnist", "a handwritten seven", [7]),
        ("mnist", "the digit 7", [7]),
        ("mnist", "seven, a handwritten 3", [7, 3]),
        ("fashion_mnist", "a pair of ankle boots", [9]),
        ("fashion_mnist", "a photo of an Ankle Boot", [9]),
        # T-shirt/top, not also Shirt: "shirt" lies inside the longer name.
        ("fashion_mnist", "a white t-shirt", [0]),
        ("fashion_mnist", "a folded T-shirt/top", [0]),
        ("fashion_mnist", "a striped shirt", [6]),
    ],
)
def test_a_sentence_selects_the_one_class_it_names(dataset, prompt, expected):
    assert parse_prompt(prompt, datasets.dataset_info(dataset)) == expected


@pytest.mark.parametrize(
    "dataset, prompt, message",
    [
        ("cifar10", "a cat and a dog", r"'a cat and a dog' .* names 2 classes \(cat, dog\)"),
        ("fashion_mnist", "a shirt and a top", r"names 2 classes \(T-shirt/top, Shirt\)"),
        ("mnist", "one seven", r"names 2 classes \(1, 7\)"),
        # Whole words only: "catalog" and "cats" do not name "cat".
        ("cifar10", "catalog", r"unknown class 'catalog' .* a sentence naming one of them"),
        ("cifar10", "a catalog of cats", r"unknown class 'a catalog of cats'"),
    ],
)
def test_a_sentence_naming_no_class_or_several_is_one_line(dataset, prompt, message):
    with pytest.raises(UserError, match=message) as error:
        parse_prompt(prompt, datasets.dataset_info(dataset))
    assert "\n" not in str(error.value)


def test_unknown_word_is_one_line_listing_the_valid_ones():
    with pytest.raises(UserError) as error:
        parse_prompt("cat,unicorn", datasets.dataset_info("cifar10"))
    message = str(error.value)
    assert "\n" not in message
    assert "'unicorn'" in message
    for name in datasets.CLASS_NAMES["cifar10"]:
        assert name in message
    assert "lorry" in message  # aliases are listed too
    with pytest.raises(UserError, match=r"class 10 .* out of range .*0-9"):
        parse_prompt("10", datasets.dataset_info("mnist"))
    with pytest.raises(UserError, match="unknown class 'sneaker'"):
        parse_prompt("sneaker", datasets.dataset_info("mnist"))


@pytest.mark.parametrize("dataset", sorted(datasets.CLASS_NAMES))
def test_class_names_are_the_tfds_label_names(dataset):
    import tensorflow_datasets as tfds

    builder = tfds.builder(dataset, data_dir=tfds_reader.resolve_data_dir(""))
    assert tuple(builder.info.features["label"].names) == datasets.CLASS_NAMES[dataset]
    assert datasets.dataset_info(dataset).class_names == datasets.CLASS_NAMES[dataset]


@pytest.mark.parametrize("drop_prob", [0.1, 0.3])
def test_null_token_rate_in_training_batches(drop_prob):
    """Batches drawn as train_step draws them carry the null label at the configured rate."""
    mesh = parallel.create_mesh()
    num_classes, num = 10, 50
    # Image i shows its label in every pixel, so each batch row can be traced to its true label.
    labels = np.arange(num, dtype=np.int32) % num_classes
    images = np.broadcast_to(labels[:, None, None, None], (num, 2, 2, 1)).astype(np.uint8)
    dataset = batches.to_device(images, labels, mesh)
    config = ml_collections.ConfigDict(
        dict(
            training=dict(batch_size=1000, cond_drop_prob=drop_prob),
            data=dict(random_flip=False, centered=False),
        )
    )
    draw = jax.jit(
        lambda key: draw_training_batch(
            key, dataset, config, num_classes, parallel.batch_sharded(mesh)
        )
    )
    nulls, total = 0, 0
    for i in range(20):
        x, drawn = jax.device_get(draw(jax.random.key(i)))
        true_labels = np.round(x[:, 0, 0, 0] * 255).astype(np.int32)
        kept = drawn != num_classes
        np.testing.assert_array_equal(drawn[kept], true_labels[kept])
        nulls += int((~kept).sum())
        total += drawn.size
    rate = nulls / total
    sigma = np.sqrt(drop_prob * (1 - drop_prob) / total)
    assert abs(rate - drop_prob) < 4 * sigma, (rate, drop_prob)


# A toy conditional model: class y's data is N(MEANS[y], S^2) in every pixel; the
# null "class" (index 3) is N(MEANS[3], S^2). Under the VE SDE its exact score is
# -(x - mu_y) / (S^2 + std(t)^2).
MEANS = jnp.asarray([-0.5, 0.2, 0.6, 0.1])
S = 0.2
NULL = 3


def toy_score(sde):
    def score_given_labels(x, t, y):
        var = S**2 + sde.marginal_std(t) ** 2
        return -(x - MEANS[y][:, None, None, None]) / var[:, None, None, None]

    return score_given_labels


def test_guidance_zero_is_the_conditional_score_exactly():
    sde = VESDE()
    x = jax.random.normal(jax.random.key(0), (6, 4, 4, 1))
    t = jnp.linspace(0.1, 1.0, 6)
    labels = jnp.asarray([0, 1, 2, 0, 1, 2])
    guided = guided_score_fn(toy_score(sde), labels, NULL, 0.0)(x, t)
    np.testing.assert_array_equal(guided, toy_score(sde)(x, t, labels))


@pytest.mark.parametrize("w", [0.5, 1.0, 3.0])
def test_guidance_formula(w):
    sde = VESDE()
    x = jax.random.normal(jax.random.key(1), (6, 4, 4, 1))
    t = jnp.linspace(0.1, 1.0, 6)
    labels = jnp.asarray([0, 1, 2, NULL, 1, 2])
    guided = np.asarray(guided_score_fn(toy_score(sde), labels, NULL, w)(x, t))
    # Reference in numpy: (1 + w) s(x, c) - w s(x, null), example by example.
    var = S**2 + np.asarray(sde.marginal_std(t))[:, None, None, None] ** 2
    x, means = np.asarray(x), np.asarray(MEANS)
    conditional = -(x - means[np.asarray(labels)][:, None, None, None]) / var
    unconditional = -(x - means[NULL]) / var
    np.testing.assert_allclose(guided, (1 + w) * conditional - w * unconditional, rtol=1e-5)
    # A null-labelled example is not guided at all: s(x, null) either way.
    np.testing.assert_allclose(guided[3], unconditional[3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sampler_name", sorted(SAMPLERS))
def test_every_sampler_follows_the_guided_score(sampler_name):
    """Guiding N(mu_c, S^2) against N(mu_null, S^2) with weight w is sampling
    N((1 + w) mu_c - w mu_null, S^2): each sampler must land on that mean."""
    sde, w = VESDE(), 1.5
    sampler = create_sampler(sampling_config(**SAMPLERS[sampler_name]))
    labels = jnp.repeat(jnp.asarray([0, 2]), 128)
    score_fn = guided_score_fn(toy_score(sde), labels, NULL, w)
    x = jax.jit(lambda key: sampler(key, score_fn, sde, (256, 8, 8, 1)))(jax.random.key(0))
    for label, rows in ((0, x[:128]), (2, x[128:])):
        expected = (1 + w) * float(MEANS[label]) - w * float(MEANS[NULL])
        assert abs(float(rows.mean()) - expected) < 0.03, (label, float(rows.mean()), expected)
        assert abs(float(rows.std()) - S) < 0.02
