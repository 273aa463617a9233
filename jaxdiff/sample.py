"""Sampling from a trained model: grids during training and `--mode=sample`."""

import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxdiff import data, parallel, samplers
from jaxdiff.checkpoint import Checkpointer
from jaxdiff.experiment import Experiment, create_experiment
from jaxdiff.models import make_score_fn
from jaxdiff.state import abstract_train_state, create_optimizer
from jaxdiff.visualize import image_grid, save_png

logger = logging.getLogger("jaxdiff")


def make_sample_fn(experiment: Experiment) -> Callable[[Any], jax.Array]:
    """Jits params -> (num_samples, H, W, C) uint8 samples with the configured sampler.

    The key is fixed by `config.seed`, so grids from successive checkpoints share
    their noise and show how the model improved. Samples are split over the
    devices when their number allows it.
    """
    config = experiment.config
    sampler = samplers.create_sampler(config.sampling)
    num = config.sampling.num_samples
    mesh = experiment.mesh
    sharding = parallel.batch_sharded(mesh) if num % mesh.size == 0 else parallel.replicated(mesh)
    key = jax.random.fold_in(jax.random.key(config.seed), 2)

    def sample_fn(params):
        score_fn = make_score_fn(experiment.model, params, experiment.sde, config.model)

        def sharded_score_fn(x, t):
            # Pins the sampler's carry to the batch sharding; XLA propagates the rest.
            return score_fn(jax.lax.with_sharding_constraint(x, sharding), t)

        x = sampler(key, sharded_score_fn, experiment.sde, (num, *experiment.image_shape))
        return data.to_uint8(x, config.data.centered)

    return jax.jit(sample_fn, out_shardings=sharding)


def save_grid(samples: jax.Array, workdir: str, step: int, is_main: bool = True) -> np.ndarray:
    """Writes `workdir/samples/step_<step>.png` and returns the grid image."""
    grid = image_grid(parallel.to_host(samples))
    if is_main:
        save_png(os.path.join(workdir, "samples", f"step_{step:07d}.png"), grid)
    return grid


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`--mode=sample`: draws samples with the latest checkpoint's EMA parameters.

    Writes `samples/sample_<step>_<sampler>.png` (a grid) and `.npz` (`images`
    uint8 NHWC, `step`, `sampler`, `num_steps`) into the workdir.

    Returns:
      The path of the .npz file.
    """
    experiment = create_experiment(config)
    config = experiment.config
    workdir = os.path.abspath(workdir)
    checkpointer = Checkpointer(workdir, create=False)
    try:
        state = checkpointer.restore(
            abstract_train_state(experiment, create_optimizer(config.training))
        )
    finally:
        checkpointer.close()
    step = int(state.step)
    logger.info(
        "Sampling %d images at step %d with %s (%d NFE each)",
        config.sampling.num_samples,
        step,
        config.sampling.sampler,
        samplers.num_function_evals(config.sampling),
    )
    images = parallel.to_host(make_sample_fn(experiment)(state.ema_params))
    stem = os.path.join(workdir, "samples", f"sample_{step:07d}_{config.sampling.sampler}")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        save_png(stem + ".png", image_grid(images))
        with open(stem + ".npz.tmp", "wb") as f:
            np.savez(
                f,
                images=images,
                step=step,
                sampler=config.sampling.sampler,
                num_steps=config.sampling.num_steps,
            )
        os.replace(stem + ".npz.tmp", stem + ".npz")
        logger.info("Wrote %s.png and %s.npz", stem, stem)
    return stem + ".npz"
