"""Train-step throughput (images/s) of each dataset config, and of the layer/loop choices.

    python benchmarks/probes/train_throughput.py                  # all rows, ~15 min on 2 CPU cores
    python benchmarks/probes/train_throughput.py --rows=mnist,mnist_cond --name=cond_vs_uncond

All rows are compiled and warmed up first, then timed in turns (row 1, row 2,
..., row 1, ...) so that a noisy machine slows them alike. In each turn a row
runs one untimed call before its timed one: on CPU, without it, the MNIST row
timed right after the CIFAR-10 rows ran at a third of its speed (the cost of
switching programs, not of the row). Each
figure is the median over `--repeats` timed calls; ratios between rows of one
run are the trustworthy comparison. Results are printed as a table and saved to
benchmarks/results/<name>_<backend>.json.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

# The repository, for jaxdiff.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jaxdiff.configs import (
    cifar10,
    cifar10_cond,
    cifar10_latent,
    fashion_mnist,
    fashion_mnist_cond,
    fashion_mnist_latent,
    mnist,
    mnist_cond,
    mnist_latent,
)

from jaxdiff.data import batches
from jaxdiff.experiment import create_experiment
from jaxdiff.models import count_params
from jaxdiff.training.score import make_train_call
from jaxdiff.training.state import create_optimizer, create_replicated_train_state


def _config(module, **training):
    config = module.get_config()
    config.training.update(training)
    return config


def _channels(module, channels):
    config = _config(module, steps_per_call=1)
    config.model.channels = channels
    return config


def _resize_decoder(module):
    config = _config(module, steps_per_call=1)
    config.model.name = "seed_unet_resize"
    return config


# name -> (config factory, python_loop override or None for the backend default).
# The dataset rows run one step per call, so they compare the networks alone.
ROWS = {
    "mnist": (lambda: _config(mnist, steps_per_call=1), None),
    "fashion_mnist": (lambda: _config(fashion_mnist, steps_per_call=1), None),
    "cifar10": (lambda: _config(cifar10, steps_per_call=1), None),
    "mnist_cond": (lambda: _config(mnist_cond, steps_per_call=1), None),
    "fashion_mnist_cond": (lambda: _config(fashion_mnist_cond, steps_per_call=1), None),
    "cifar10_cond": (lambda: _config(cifar10_cond, steps_per_call=1), None),
    # Latent diffusion's stage 2: the score model on the autoencoder's latents.
    "mnist_latent": (lambda: _config(mnist_latent, steps_per_call=1), None),
    "fashion_mnist_latent": (lambda: _config(fashion_mnist_latent, steps_per_call=1), None),
    "cifar10_latent": (lambda: _config(cifar10_latent, steps_per_call=1), None),
    # The MNIST nets with the other decoder: resize + 3x3 conv instead of transposed convs.
    "mnist_seed_unet_resize": (lambda: _resize_decoder(mnist), None),
    "mnist_cond_seed_unet_resize": (lambda: _resize_decoder(mnist_cond), None),
    # configs/mnist.py at other widths (the model-size rows of docs/results.md).
    "mnist_narrow": (lambda: _channels(mnist, (24, 48, 96, 192)), None),
    "mnist_wide": (lambda: _channels(mnist, (48, 96, 192, 384)), None),
    "mnist_4_steps_per_call_python_loop": (lambda: _config(mnist, steps_per_call=4), True),
    "mnist_4_steps_per_call_lax_scan": (lambda: _config(mnist, steps_per_call=4), False),
}


def prepare(config, python_loop):
    """Compiles a row's train call and runs it once; returns (timed_call, warm-up s, params)."""
    experiment = create_experiment(config)
    config = experiment.config
    images, labels = batches.load_split(config.data.dataset, "train[:1024]", config.data.data_dir)
    if experiment.autoencoder is not None:
        # Stage 2 trains on latents; their values do not change the step's cost.
        latents = np.random.default_rng(0).standard_normal((len(images), *experiment.data_shape))
        dataset = batches.to_device(latents.astype(np.float32), labels, experiment.mesh)
    else:
        dataset = batches.to_device(images, labels, experiment.mesh)
    tx = create_optimizer(config.training)
    state = create_replicated_train_state(jax.random.key(0), experiment, tx)
    call = make_train_call(
        experiment.model, experiment.sde, tx, config, experiment.mesh, python_loop
    )
    key = jax.random.key(1)
    start = time.perf_counter()
    state, _ = call(state, key, dataset)
    jax.block_until_ready(state)
    warmup = time.perf_counter() - start
    holder = {"state": state}

    def timed_call():
        """Seconds per optimizer step of one call, after an untimed call."""
        holder["state"], _ = call(holder["state"], key, dataset)
        jax.block_until_ready(holder["state"])
        start = time.perf_counter()
        holder["state"], _ = call(holder["state"], key, dataset)
        jax.block_until_ready(holder["state"])
        return (time.perf_counter() - start) / config.training.steps_per_call

    return timed_call, warmup, count_params(state.params)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row")
    parser.add_argument("--batch_size", type=int, default=0, help="override every config's batch")
    parser.add_argument("--name", default="train_throughput", help="results file stem")
    args = parser.parse_args()
    names = args.rows.split(",")
    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        sys.exit(f"error: unknown rows {unknown}; choose from {sorted(ROWS)}")
    configs, prepared = {}, {}
    for name in names:
        make_config, python_loop = ROWS[name]
        configs[name] = make_config()
        if args.batch_size:
            configs[name].training.batch_size = args.batch_size
        prepared[name] = prepare(configs[name], python_loop)
        print(f"{name}: compiled and warmed up in {prepared[name][1]:.1f} s", flush=True)
    times = {name: [] for name in names}
    for _ in range(args.repeats):  # In turns: each round times every row once.
        for name in names:
            times[name].append(prepared[name][0]())
    results = []
    for name in names:
        config, (_, warmup, params) = configs[name], prepared[name]
        seconds = statistics.median(times[name])
        row = {
            "row": name,
            "model": config.model.name,
            "conditional": bool(config.model.conditional),
            "latent": bool(config.autoencoder.enabled),
            "params": params,
            "batch": config.training.batch_size,
            "steps_per_call": config.training.steps_per_call,
            "seconds_per_step": seconds,
            "images_per_sec": config.training.batch_size / seconds,
            "warmup_s": warmup,
        }
        results.append(row)
        print(
            f"{name:38s} {config.model.name:18s} {params:>10,d} params  batch {row['batch']:4d}  "
            f"{row['images_per_sec']:8.1f} img/s  {seconds * 1e3:8.1f} ms/step  "
            f"warm-up {warmup:6.1f} s",
            flush=True,
        )
    out = {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "repeats": args.repeats,
        "rows": results,
    }
    benchmarks = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(benchmarks, "results", f"{args.name}_{jax.default_backend()}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
