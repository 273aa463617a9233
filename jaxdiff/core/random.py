"""Named random streams: where every key of a run comes from.

A run's randomness starts from `jax.random.key(config.seed)`, "the seed". Each
use draws from a stream of its own, `fold_in(root, Stream.X)`, so a new use
never moves another's numbers. The numbers below are fixed: changing one
changes what every existing config and seed produces.
"""

import enum

import jax


class Stream(enum.IntEnum):
    """The streams folded into the root key, one per use."""

    SCORE_TRAINING = 0  # the score model's batches, noise and dropout (`score_step_keys`)
    SCORE_INIT = 1  # its initial parameters
    SAMPLING = 2  # the sampler's noise: grids, --mode=sample, Pipeline.sample (`sampling_key`)
    AUTOENCODER_INIT = 3
    AUTOENCODER_TRAINING = 4  # (`step_keys`)
    CLASSIFIER_INIT = 5
    CLASSIFIER_TRAINING = 6  # (`step_keys`)
    LIKELIHOOD = 7  # the likelihood's probe vectors in --mode=eval


class SamplerStream(enum.IntEnum):
    """The streams folded into the key a sampler receives."""

    STEP_NOISE = 1  # the noise each step adds (RePaint's moves fold 1 + move instead)
    CONTROL = 3  # what a controlled scan draws: the known part's noise, RePaint's jumps


# Folded into batch 0's sampling key: the standard normal draw an edit starts from.
EDIT_NOISE = 5


def stream(seed: int, name: Stream) -> jax.Array:
    """The root key of one stream of `seed`."""
    return jax.random.fold_in(jax.random.key(seed), name)


def sampling_key(seed: int, batch: int = 0) -> jax.Array:
    """The sampler's noise for a seed; grids from successive checkpoints share it.

    `batch` b > 0 gives the noise of the seed's batch b (`--mode=sample` in
    batches of `sampling.batch_size`): a key of its own, folded from batch 0's,
    which is the seed's key itself.
    """
    key = stream(seed, Stream.SAMPLING)
    return jax.random.fold_in(key, batch) if batch else key


def eval_call_seed(seed: int, call: int) -> int:
    """The seed of the evaluation's sampler call `call`: its samples are `sampling_key(it)`'s."""
    return seed + 1 + call


def score_step_keys(key: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The score model's (batch, noise, dropout) keys at a training step."""
    batch, noise, dropout = jax.random.split(jax.random.fold_in(key, step), 3)
    return batch, noise, dropout


def score_batch_key(key: jax.Array, step: jax.Array) -> jax.Array:
    """The key the score model's batch indices are drawn with at `step` (streaming too).

    The batch key is split once more: its other half drops labels for guidance.
    """
    return jax.random.split(score_step_keys(key, step)[0])[0]


def step_keys(key: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The autoencoder's and the classifier's (batch, other) keys at a training step.

    The batch is drawn with the first; the second is the autoencoder's
    posterior noise or the classifier's crop offsets.
    """
    batch, other = jax.random.split(jax.random.fold_in(key, step))
    return batch, other


def step_batch_key(key: jax.Array, step: jax.Array) -> jax.Array:
    """The batch half of `step_keys`: what streaming draws the same batches with."""
    return step_keys(key, step)[0]
