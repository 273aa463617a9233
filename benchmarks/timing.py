"""Helpers the benchmarks share: timing programs in turns, saving rows, a config's sampler."""

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp

from jaxdiff.diffusion.preconditioning import make_score_fn
from jaxdiff.sampling import samplers


def time_in_turns(programs: dict, args: tuple, repeats: int) -> dict:
    """Median seconds of each program on `args`, called in turns after one warm-up call each.

    Calling the programs in turns, rather than one after the other, spreads this
    machine's drifts in speed over all of them alike.
    """
    times = {key: [] for key in programs}
    for program in programs.values():
        jax.block_until_ready(program(*args))
    for _ in range(repeats):
        for key, program in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(program(*args))
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def time_sides_in_turns(sides: dict, repeats: int) -> dict:
    """Median seconds of each side's `train()` and `sample()`, keyed (name, "train" or "sample").

    `sides` maps names to built, warmed-up `run.JaxSide`s; each round calls
    every side's train call, then its sampler, in turns.
    """
    times = {(name, what): [] for name in sides for what in ("train", "sample")}
    for _ in range(repeats):
        for name, side in sides.items():
            start = time.perf_counter()
            side.train()
            middle = time.perf_counter()
            side.sample()
            times[(name, "train")].append(middle - start)
            times[(name, "sample")].append(time.perf_counter() - middle)
    return {key: statistics.median(t) for key, t in times.items()}


def write_json(rows, path: str) -> None:
    """Writes `rows` as indented JSON to `path`, creating its folder, and says so."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {path}")


def labelled_sampler(experiment, sampling_config, num_samples: int):
    """(params, key) -> samples: the config's sampler on `num_samples`, not yet jitted.

    A conditional model samples the classes in turn (label i % num_classes), so
    the benchmarks time the conditional network, unguided.
    """
    labels = None
    if experiment.num_classes:
        labels = jnp.arange(num_samples, dtype=jnp.int32) % experiment.num_classes
    sampler = samplers.create_sampler(sampling_config)
    shape = (num_samples, *experiment.data_shape)
    model_config = experiment.config.model

    def sample(params, key):
        score_fn = make_score_fn(
            experiment.model, params, experiment.sde, model_config, labels=labels
        )
        return sampler(key, score_fn, experiment.sde, shape)

    return sample
