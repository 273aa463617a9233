"""A config's train call with and without remat and gradient accumulation: memory and images/s.

    python benchmarks/export_folder.py cifar10 runs/cifar10_test64 --splits=test --size=64
    python benchmarks/memory_options.py --config=folder64 --data_path=runs/cifar10_test64/test

For each variant (`--variants`: base, remat, accum<k>, remat_accum<k>) the
train call is compiled and XLA's memory analysis read (the line training logs
at start-up, `compiler.memory_summary`), then the variants' calls are timed in
turns, `--repeats` rounds after a warm-up call each; images/s is the median.
Writes `--out` (.json).
"""

import argparse
import functools
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jaxdiff.configs as configs
from common import time_in_turns, write_json

from jaxdiff.core.compiler import memory_summary
from jaxdiff.core.random import score_batch_key
from jaxdiff.data import datasets, streaming
from jaxdiff.training.score import create_train_setup


def variant_config(args, variant: str):
    config = configs.get_config(args.config)
    config.training.batch_size = args.batch_size
    config.training.steps_per_call = 1
    if args.data_path:
        config.data.path = args.data_path
    if args.channels:
        config.model.channels = tuple(int(c) for c in args.channels.split(","))
    config.model.remat = variant.startswith("remat")
    if "accum" in variant:
        config.training.grad_accum_steps = int(variant.rsplit("accum", 1)[1])
    return config


def train_call(run: dict) -> None:
    """One call of a variant's compiled train call on its state, waiting for it."""
    run["state"], metrics = run["compiled"](run["state"], run["key"], run["dataset"])
    jax.block_until_ready(metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="folder64")
    parser.add_argument("--data_path", default="", help="data.path for a folder config")
    parser.add_argument("--split", default="train")
    parser.add_argument("--channels", default="", help="model.channels (default: the config's)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--variants", default="base,remat,accum2,accum4,remat_accum4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/memory_options_cpu.json")
    args = parser.parse_args()

    runs = {}
    for variant in args.variants.split(","):
        setup = create_train_setup(variant_config(args, variant))
        experiment = setup.experiment
        config = experiment.config
        images, labels = datasets.read_split(config.data, args.split)
        dataset = streaming.training_data(
            images, labels, experiment.mesh, config.data.on_device, score_batch_key
        )
        state = setup.init_state(jax.random.key(0))
        key = jax.random.key(1)
        start = time.perf_counter()
        compiled = setup.train_call.lower(state, key, dataset).compile()
        compile_seconds = time.perf_counter() - start
        summary = memory_summary(compiled, "train call")
        print(f"{variant}: {summary} (compiled in {compile_seconds:.0f} s)", flush=True)
        run = dict(compiled=compiled, state=state, key=key, dataset=dataset, summary=summary)
        run.update(compile_seconds=compile_seconds, image_shape=experiment.image_shape)
        runs[variant] = run
        train_call(run)  # warm-up
    calls = {variant: functools.partial(train_call, run) for variant, run in runs.items()}
    for variant, seconds in time_in_turns(calls, args.repeats).items():
        runs[variant]["times"] = seconds
    rows = []
    base = None
    for variant, run in runs.items():
        rate = args.batch_size / statistics.median(run["times"])
        s = run["summary"]
        base = base or (s.temp_bytes, rate)
        rows.append(
            dict(
                variant=variant,
                config=args.config,
                image_shape=list(run["image_shape"]),
                batch_size=args.batch_size,
                images_per_sec=rate,
                speed_vs_base=rate / base[1],
                temp_bytes=s.temp_bytes,
                total_bytes=s.total_bytes,
                temp_vs_base=s.temp_bytes / base[0] if s.temp_bytes and base[0] else None,
                memory_line=str(s),
                compile_seconds=run["compile_seconds"],
                device=jax.devices()[0].device_kind,
                seconds=run["times"],
            )
        )
        print(
            f"{variant:>14}: {rate:7.2f} img/s ({rate / base[1]:.2f}x)  "
            f"temp {s.temp_bytes / 2**20:8.1f} MiB"
            + (f" ({s.temp_bytes / base[0]:.2f}x)" if s.temp_bytes and base[0] else "")
            + f"  total {s.total_bytes / 2**20:8.1f} MiB"
        )
    write_json(rows, args.out)


if __name__ == "__main__":
    main()
