"""bf16 against fp32 training of one jaxdiff config: step time, and where the time goes.

    python benchmarks/probes/precision_probe.py --model=seed_uncond --batch=1024

Times jaxdiff's train call in both precisions (median of `--repeats` runs of
`--steps` steps, the two precisions in turns; `--precisions` picks), then
traces `--trace_steps` steps of each with `jax.profiler` and sums the device
time of every XLA kernel in the trace. Prints the total per precision, the
model FLOPs utilisation on a device with a known peak (FLOPs counted as in
benchmarks/run.py), and the kernels that account for the difference, and
writes the table as JSON (`--out`).
"""

import argparse
import collections
import glob
import gzip
import json
import os
import statistics
import sys
import tempfile
import time

import jax

# The repository (for jaxdiff and tests) and benchmarks/ (for run.py and timing.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from run import MODELS, benchmark_images, peak_flops, train_step_flops

from jaxdiff.data import batches
from jaxdiff.experiment import create_experiment
from jaxdiff.training.score import make_train_call
from jaxdiff.training.state import create_optimizer, create_replicated_train_state


def build(model_name: str, batch: int, half_precision: bool, steps: int, images, labels):
    """A ready train call (compiled and run once) of `steps` steps, and its arguments."""
    config = MODELS[model_name]()
    t = config.training
    t.batch_size, t.half_precision, t.steps_per_call = batch, half_precision, steps
    t.num_steps = t.log_every = t.checkpoint_every = steps
    experiment = create_experiment(config)
    config = experiment.config
    tx = create_optimizer(config.training)
    key = jax.random.key(0)
    state = create_replicated_train_state(key, experiment, tx)
    dataset = batches.to_device(images, labels, experiment.mesh)
    call = make_train_call(experiment.model, experiment.sde, tx, config, experiment.mesh)
    flops = train_step_flops(experiment, tx, state, key, dataset)
    state, metrics = call(state, key, dataset)
    jax.block_until_ready(metrics)
    return {"call": call, "state": state, "key": key, "dataset": dataset, "flops": flops}


def run(side) -> None:
    side["state"], metrics = side["call"](side["state"], side["key"], side["dataset"])
    jax.block_until_ready(metrics)


def device_kernel_times(trace_dir: str) -> dict[str, float]:
    """Microseconds per kernel name on the first device in a perfetto trace (host ops on CPU)."""
    paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not paths:
        return {}
    with gzip.open(paths[0]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    device_pids = {pid for pid, name in names.items() if "/device:" in name}
    if not device_pids:  # CPU: XLA ops run on host threads.
        device_pids = {pid for pid, name in names.items() if "/host:CPU" in name}
    first = min(device_pids, key=lambda pid: names[pid]) if device_pids else None
    totals = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("pid") == first:
            totals[e["name"]] += float(e.get("dur", 0.0))
    return dict(totals)


def trace(side, steps: int, directory: str) -> dict[str, float]:
    with jax.profiler.trace(directory, create_perfetto_trace=True):
        for _ in range(steps):
            run(side)
    return device_kernel_times(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="seed_uncond", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trace_steps", type=int, default=2, help="calls traced per precision")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results/precision_probe.json")
    parser.add_argument("--data_npz_dir", default="", help="as in benchmarks/run.py")
    parser.add_argument(
        "--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 or both"
    )
    args = parser.parse_args()
    precisions = args.precisions.split(",")
    if not precisions or any(p not in ("fp32", "bf16") for p in precisions):
        sys.exit(f"error: --precisions takes fp32 and/or bf16, got {args.precisions!r}")
    dataset = "cifar10" if args.model.startswith("cifar10") else "mnist"
    images, labels = benchmark_images(dataset, args.data_npz_dir)
    sides = {}
    for precision in precisions:
        start = time.perf_counter()
        sides[precision] = build(
            args.model, args.batch, precision == "bf16", args.steps, images, labels
        )
        print(f"{precision}: built in {time.perf_counter() - start:.1f} s", flush=True)
    times = {p: [] for p in sides}
    for _ in range(args.repeats):
        for precision, side in sides.items():
            start = time.perf_counter()
            run(side)
            times[precision].append((time.perf_counter() - start) / args.steps)
    result = {"model": args.model, "batch": args.batch, "device": jax.devices()[0].device_kind}
    for precision, side in sides.items():
        ms = 1000 * statistics.median(times[precision])
        result[f"{precision}_ms_per_step"] = ms
        line = f"{precision}: {ms:.2f} ms/step ({args.batch / ms * 1000:,.0f} img/s)"
        flops, peak = side["flops"], peak_flops(precision)
        result[f"{precision}_gflops_per_step"] = None if flops is None else flops / 1e9
        if flops is not None:
            line += f", {flops / 1e9:,.1f} GFLOP/step"
            if peak is not None:
                result[f"{precision}_mfu"] = flops / (ms / 1000) / peak
                line += (
                    f", MFU {100 * result[f'{precision}_mfu']:.1f}% of {peak / 1e12:.0f} TFLOP/s"
                )
        print(line, flush=True)
    if len(sides) == 2:
        result["bf16_over_fp32"] = result["bf16_ms_per_step"] / result["fp32_ms_per_step"]
        print(f"bf16 / fp32 step time: {result['bf16_over_fp32']:.3f}", flush=True)

    kernels = {}
    for precision, side in sides.items():
        with tempfile.TemporaryDirectory() as directory:
            totals = trace(side, args.trace_steps, directory)
        per_step = args.trace_steps * args.steps
        kernels[precision] = {name: us / per_step for name, us in totals.items()}
        total_ms = sum(kernels[precision].values()) / 1000
        print(f"{precision}: traced device time {total_ms:.2f} ms/step", flush=True)
    if len(sides) == 2:
        names = set(kernels["fp32"]) | set(kernels["bf16"])
        rows = sorted(
            ((kernels["bf16"].get(n, 0.0) - kernels["fp32"].get(n, 0.0), n) for n in names),
            reverse=True,
        )
        print(f"kernels by extra bf16 time (us/step), top {args.top} and bottom {args.top}:")
        for diff, name in rows[: args.top] + rows[-args.top :]:
            print(
                f"  {diff:+9.1f}  fp32 {kernels['fp32'].get(name, 0.0):9.1f}  "
                f"bf16 {kernels['bf16'].get(name, 0.0):9.1f}  {name[:110]}"
            )
    for precision, times_us in kernels.items():
        print(f"{precision}: top {args.top} kernels (us/step):")
        for name, us in sorted(times_us.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {us:9.1f}  {name[:120]}")
    result["kernels_us_per_step"] = kernels
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
