"""glibc's malloc as configured by default against `jaxdiff.core.host_memory.keep_freed_memory`.

    python benchmarks/probes/host_memory.py --models=mnist,cifar10 --sides=jaxdiff,torch_eager

Each model is built once per side, as benchmarks/run.py builds it (the train
call of `--train_steps` steps, the Euler-Maruyama sampler of `--sample_steps`
steps, batch `--batch`), in one process that has called `keep_freed_memory()`
before JAX started. Then, `--repeats` times, in turns:

- glibc's default: `mmap` for large blocks, trimming of the heap's free top,
  and the heap trimmed at the switch (`malloc_trim`), so that each call gets
  freshly mapped memory, as in a process that never called it;
- kept: `keep_freed_memory()`'s settings.

After each switch one call of each program runs untimed, so the kept rows do
not count the first call's growing of the heap. The arena setting stays on in
both (it only takes effect before threads start), so the default rows' large
blocks are mapped in the main arena rather than a thread's own; both ways they
are mapped per call. Prints, per program, the median wall time, the process's
system (kernel) time and its minor page faults per call, and writes them as
JSON (`--out`).
"""

import argparse
import ctypes
import os
import resource
import statistics
import sys
import time

# The repository (for jaxdiff and tests) and benchmarks/ (for run.py and timing.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jaxdiff.core.host_memory import keep_freed_memory

if not keep_freed_memory():  # Before JAX starts: see its docstring.
    sys.exit("error: keep_freed_memory() did not apply: this benchmark needs glibc")

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from run import MODELS, JaxSide, TorchSide, benchmark_images
from timing import write_json

_LIBC = ctypes.CDLL("libc.so.6")
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def use_glibc_defaults() -> None:
    """glibc's default thresholds, and the heap's free memory handed back."""
    _LIBC.mallopt(_M_MMAP_MAX, 65536)
    _LIBC.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
    _LIBC.malloc_trim(0)


MODES = {"glibc_default": use_glibc_defaults, "kept": keep_freed_memory}


def measure(fn) -> tuple[float, float, int]:
    """Wall seconds, system seconds and minor page faults of one call of `fn`."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return wall, after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt


def model_rows(name: str, args) -> list[dict]:
    """Each side's train call and sampler under both modes, timed in turns."""
    config = MODELS[name]
    images, labels = benchmark_images(config().data.dataset)
    sides = []
    for side in args.sides.split(","):
        if side == "jaxdiff":
            sides.append(JaxSide(config(), args, images, labels))
        else:
            sides.append(TorchSide(config(), side == "torch_compile", args, images, labels))
    calls = [
        (side.name, what, fn)
        for side in sides
        for what, fn in (("train", side.train), ("sample", side.sample))
    ]
    samples = {(side, what, mode): [] for side, what, _ in calls for mode in MODES}
    for _ in range(args.repeats):
        for mode, switch in MODES.items():
            switch()
            for side, what, fn in calls:
                fn()  # Untimed: the first call after a switch.
                samples[(side, what, mode)].append(measure(fn))
    rows = []
    for side, what, _ in calls:
        row = {"model": name, "side": side, "call": what, "batch": args.batch}
        for mode in MODES:
            wall, system, faults = (
                statistics.median(x) for x in zip(*samples[(side, what, mode)], strict=True)
            )
            row[mode] = {
                "ms": round(1000 * wall, 1),
                "system_ms": round(1000 * system),
                "faults": round(faults),
            }
        row["speedup"] = round(row["glibc_default"]["ms"] / row["kept"]["ms"], 2)
        d, k = row["glibc_default"], row["kept"]
        print(
            f"{name:14s} {side:13s} {what:6s} {d['ms']:9.1f} {d['system_ms']:6d} {d['faults']:8d}"
            f"   {k['ms']:9.1f} {k['system_ms']:6d} {k['faults']:8d}   {row['speedup']:5.2f}x",
            flush=True,
        )
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mnist,cifar10")
    parser.add_argument("--sides", default="jaxdiff,torch_eager")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train_steps", type=int, default=2)
    parser.add_argument("--sample_steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--out", default=f"benchmarks/results/host_memory_{jax.default_backend()}.json"
    )
    args = parser.parse_args()
    for name in args.models.split(","):
        if name not in MODELS:
            sys.exit(f"error: unknown model {name!r}; choose from {sorted(MODELS)}")
    for side in args.sides.split(","):
        if side not in ("jaxdiff", "torch_eager", "torch_compile"):
            sys.exit(f"error: unknown side {side!r}; choose jaxdiff, torch_eager, torch_compile")
    args.sample_batch, args.steps_per_call, args.precision = args.batch, 0, "fp32"
    header = f"{'glibc default: ms, system ms, faults':36s}  {'kept: ms, system ms, faults'}"
    print(f"{'':36s} {header}")
    rows = [row for name in args.models.split(",") for row in model_rows(name, args)]
    write_json(rows, args.out)


if __name__ == "__main__":
    main()
