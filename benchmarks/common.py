"""What the benchmark scripts share: a config's train setup and sampler, timing in turns, JSON."""

import json
import os
import time
from argparse import Namespace
from collections.abc import Callable, Hashable

import jax.numpy as jnp
from ml_collections import ConfigDict

from jaxdiff import sampling
from jaxdiff.diffusion.preconditioning import make_score_fn
from jaxdiff.training.score import TrainSetup, create_train_setup


def timed_setup(config: ConfigDict, args: Namespace, sampler: str, train_steps: int) -> TrainSetup:
    """`create_train_setup` of `config` as a benchmark times it.

    `args`: the flags `--batch`, `--precision` ("fp32" or "bf16"), `--steps_per_call`
    (0: the backend's) and `--sample_steps` (of `sampler`); `train_steps`: the run's length.
    """
    t = config.training
    t.batch_size, t.half_precision = args.batch, args.precision == "bf16"
    t.steps_per_call = args.steps_per_call
    t.num_steps = t.log_every = t.checkpoint_every = train_steps
    config.sampling.sampler, config.sampling.num_steps = sampler, args.sample_steps
    return create_train_setup(config)


def time_in_turns(calls: dict[Hashable, Callable[[], object]], repeats: int) -> dict:
    """Seconds of each call (one that waits for its results), `repeats` rounds of all in turns.

    Calling them in turns, rather than one after the other, spreads this
    machine's drifts in speed over all of them alike.
    """
    seconds = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return seconds


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
    sampler = sampling.create_sampler(sampling_config)
    shape = (num_samples, *experiment.data_shape)
    model, sde, model_config = experiment.model, experiment.sde, experiment.config.model

    def sample(params, key):
        score_fn = make_score_fn(model, params, sde, model_config, labels=labels)
        return sampler(key, score_fn, sde, shape)

    return sample
