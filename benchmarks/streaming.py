"""Training images/s with the split on the device vs streamed from the host, side by side.

    python benchmarks/streaming.py                              # CIFAR-10's train split
    python benchmarks/streaming.py --channels=32,64,64,64 --batch_size=64

Both paths run the same compiled train call of `--config` on the same steps
(`data.on_device=always` vs `never`, see jaxdiff.data.streaming), in turns, after a
warm-up call each; the figure is the median over `--repeats` rounds of
`--calls` calls. Also timed: the host pipeline alone (drawing rows, gathering
them, placing them on the device) for the same calls, which is the ceiling
streaming puts on a train call's rate. Writes `--out` (.json).
"""

import argparse
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jaxdiff.configs as configs
from timing import write_json

from jaxdiff.core.random import score_batch_key
from jaxdiff.data import batches, datasets, streaming
from jaxdiff.experiment import create_experiment
from jaxdiff.training.score import make_train_call
from jaxdiff.training.state import create_optimizer, create_replicated_train_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cifar10")
    parser.add_argument("--split", default="train")
    parser.add_argument("--channels", default="", help="model.channels (default: the config's)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps_per_call", type=int, default=0, help="0: the backend's")
    parser.add_argument("--calls", type=int, default=4, help="calls per timed round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/streaming_cpu.json")
    args = parser.parse_args()

    config = configs.get_config(args.config)
    config.training.batch_size = args.batch_size
    config.training.steps_per_call = args.steps_per_call
    if args.channels:
        config.model.channels = tuple(int(c) for c in args.channels.split(","))
    experiment = create_experiment(config)
    config = experiment.config
    steps = config.training.steps_per_call
    images, labels = datasets.read_split(config.data, args.split)
    tx = create_optimizer(config.training)
    call = make_train_call(experiment.model, experiment.sde, tx, config, experiment.mesh)
    key = jax.random.key(0)
    device_data = batches.to_device(images, labels, experiment.mesh)
    stream = streaming.HostStream(images, labels, experiment.mesh, score_batch_key)
    per_round = args.calls * steps

    def run(path: str, state, first_step: int):
        if path == "device":
            batches = [device_data] * args.calls
        else:
            batches = stream.calls(key, first_step, first_step + per_round, steps, args.batch_size)
        for batch in batches:
            state, metrics = call(state, key, batch)
        jax.block_until_ready(metrics)
        return state

    def pipeline_only(first_step: int):
        placed = list(stream.calls(key, first_step, first_step + per_round, steps, args.batch_size))
        jax.block_until_ready(placed)

    states = {
        path: create_replicated_train_state(jax.random.key(1), experiment, tx)
        for path in ("device", "stream")
    }
    for path in states:  # Warm-up: compilation, and grain's first threads.
        states[path] = run(path, states[path], 0)
    pipeline_only(0)
    seconds = {"device": [], "stream": [], "pipeline": []}
    for round_index in range(args.repeats):
        first_step = (round_index + 1) * per_round
        for path in ("device", "stream"):
            start = time.perf_counter()
            states[path] = run(path, states[path], first_step)
            seconds[path].append(time.perf_counter() - start)
        start = time.perf_counter()
        pipeline_only(first_step)
        seconds["pipeline"].append(time.perf_counter() - start)
    images_per_round = per_round * args.batch_size
    rates = {k: images_per_round / statistics.median(v) for k, v in seconds.items()}
    row = {
        "config": args.config,
        "split": f"{args.split} ({len(images)} images, {images.nbytes / 2**20:.0f} MiB)",
        "model_channels": list(config.model.channels),
        "batch_size": args.batch_size,
        "steps_per_call": steps,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "images_per_sec_on_device": rates["device"],
        "images_per_sec_streamed": rates["stream"],
        "streamed_over_on_device": rates["stream"] / rates["device"],
        "images_per_sec_pipeline_alone": rates["pipeline"],
        "repeats": args.repeats,
        "seconds": seconds,
    }
    print(
        f"{args.config} {row['split']}, batch {args.batch_size}, {steps} steps/call, "
        f"{row['device']}: on device {rates['device']:.1f} img/s, streamed "
        f"{rates['stream']:.1f} img/s ({row['streamed_over_on_device']:.3f}x); host pipeline "
        f"alone {rates['pipeline']:.0f} img/s (medians of {args.repeats})"
    )
    write_json(row, args.out)


if __name__ == "__main__":
    main()
