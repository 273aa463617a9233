"""Class conditioning: prompt words -> class ids, the null token, classifier-free guidance.

A conditional model sees a class id in [0, num_classes) or the null id
`num_classes`, which stands for "no condition". Training replaces a fraction of
the labels by the null id, so one network learns both s(x, t, c) and
s(x, t, null); sampling mixes the two (Ho & Salimans, 2022).
"""

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core.common import ScoreFn
from jaxdiff.core.errors import UserError
from jaxdiff.data.datasets import DatasetInfo

# `sampling.prompt` value that asks for every class, one grid row each.
ALL_CLASSES = "all"


def _normalize(word: str) -> str:
    """Case, spaces and punctuation do not matter: "Ankle boot" == "ankle_boot" == "ankleboot"."""
    return re.sub(r"[^0-9a-z]", "", word.lower())


def _vocabulary(dataset: DatasetInfo) -> dict[str, int]:
    vocabulary = {_normalize(name): label for label, name in enumerate(dataset.class_names)}
    vocabulary.update({_normalize(word): label for word, label in dataset.aliases.items()})
    return vocabulary


def parse_prompt(prompt: str, dataset: DatasetInfo) -> list[int]:
    """Class ids named by a comma-separated prompt, in order ("cat,dog", "3,5", "all").

    Each item is a class name or alias of `dataset` (any case; spaces and
    punctuation ignored), an integer label, or a sentence that names exactly
    one class in whole words ("a photo of a cat", "a handwritten seven"). An
    empty prompt gives [] (sample unconditionally).

    Raises:
      UserError: one line naming the item that names no class (listing the
        valid ones) or several.
    """
    num_classes = dataset.num_classes
    if prompt.strip().lower() == ALL_CLASSES:
        return list(range(num_classes))
    vocabulary = _vocabulary(dataset)
    labels = []
    for item in (part.strip() for part in prompt.split(",")):
        if not item:
            continue
        if re.fullmatch(r"[+-]?\d+", item):
            label = int(item)
            if not 0 <= label < num_classes:
                raise UserError(
                    f"class {label} in sampling.prompt is out of range for {dataset.label} "
                    f"(0-{num_classes - 1})"
                )
        elif _normalize(item) in vocabulary:
            label = vocabulary[_normalize(item)]
        else:
            label = _sentence_class(item, dataset)
        labels.append(label)
    if prompt.strip() and not labels:
        raise UserError(f"sampling.prompt {prompt!r} names no class")
    return labels


def _words(text: str) -> list[str]:
    return re.findall(r"[0-9a-z]+", text.lower())


def _sentence_class(item: str, dataset: DatasetInfo) -> int:
    """The one class a sentence names: a class name or alias that occurs in it as whole words.

    "a t-shirt" names T-shirt/top, not also Shirt: a name that lies inside a
    longer name found at the same place does not count.

    Raises:
      UserError: the sentence names no class, or several.
    """
    words = _words(item)
    vocabulary = _vocabulary(dataset)
    names = [*((name, label) for label, name in enumerate(dataset.class_names))]
    phrases = [(_words(name), label) for name, label in [*names, *dataset.aliases.items()]]
    found = []  # (first word, end, label) of each occurrence
    for i, word in enumerate(words):
        if word in vocabulary:  # One word, also a name written together ("ankleboot").
            found.append((i, i + 1, vocabulary[word]))
        for phrase, label in phrases:
            if len(phrase) > 1 and words[i : i + len(phrase)] == phrase:
                found.append((i, i + len(phrase), label))
    kept = {
        label
        for start, end, label in found
        if not any(s <= start and end <= e and e - s > end - start for s, e, _ in found)
    }
    if len(kept) == 1:
        return kept.pop()
    if kept:
        named = ", ".join(dataset.class_names[label] for label in sorted(kept))
        raise UserError(
            f"{item!r} in sampling.prompt names {len(kept)} classes ({named}); a sentence "
            "must name exactly one (separate classes with commas)"
        )
    raise UserError(
        f"unknown class {item!r} in sampling.prompt for {dataset.label}; valid: "
        f"{describe_classes(dataset)}, integers 0-{dataset.num_classes - 1}, or "
        f"'{ALL_CLASSES}', or a sentence naming one of them"
    )


def describe_classes(dataset: DatasetInfo) -> str:
    """'airplane (plane, aeroplane), automobile (car), ...': the names a prompt may use."""
    parts = []
    for label, name in enumerate(dataset.class_names):
        aliases = [word for word, i in dataset.aliases.items() if i == label]
        parts.append(f"{name} ({', '.join(aliases)})" if aliases else name)
    return ", ".join(parts)


def drop_labels(key: jax.Array, labels: jax.Array, drop_prob: float, null_label: int) -> jax.Array:
    """Replaces each label by `null_label` with probability `drop_prob`, independently."""
    drop = jax.random.bernoulli(key, drop_prob, labels.shape)
    return jnp.where(drop, null_label, labels)


def guided_score_fn(
    score_given_labels: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    labels: jax.Array,
    null_label: int,
    guidance_scale: float,
) -> ScoreFn:
    """Classifier-free guidance: s = (1 + w) s(x, t, c) - w s(x, t, null).

    Both scores come from one network call on the batch stacked with itself.
    w = 0 returns the conditional score exactly (no second evaluation).

    Args:
      score_given_labels: (x, t, labels) -> score.
      labels: (B,) class ids, entries equal to `null_label` sampling
        unconditionally; or (B, null_label + 1) weights of the classes' embeddings.
      null_label: the null id.
      guidance_scale: w, a Python float (it decides the traced graph).
    """
    if guidance_scale == 0.0:
        return lambda x, t: score_given_labels(x, t, labels)
    w = guidance_scale

    # Class weights (B, num_classes + 1) mix the classes' embeddings; the null one is one-hot.
    if labels.ndim == 2:
        null = jnp.broadcast_to(
            jax.nn.one_hot(null_label, labels.shape[1], dtype=labels.dtype), labels.shape
        )
    else:
        null = jnp.full_like(labels, null_label)

    def score_fn(x, t):
        both = score_given_labels(
            jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([labels, null])
        )
        conditional, unconditional = jnp.split(both, 2)
        return (1.0 + w) * conditional - w * unconditional

    return score_fn


def row_names(labels: list[int], dataset: DatasetInfo) -> list[str]:
    """Display names of class ids."""
    return [dataset.class_names[label] for label in labels]


def repeat_labels(labels: list[int], per_class: int) -> np.ndarray:
    """Each class id repeated `per_class` times: the label of every sample, row by row."""
    return np.repeat(np.asarray(labels, np.int32), per_class)
