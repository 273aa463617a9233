"""jaxdiff's XLA compiler options against XLA's defaults: the same programs, timed in turns.

    python benchmarks/xla_options.py --models=mnist,seed_cond,fashion_mnist,cifar10_cond

For each model, jaxdiff's train call and Euler-Maruyama sampler are built
twice, as benchmarks/run.py builds them: compiled with
`jaxdiff.compiler.compiler_options()` (on CPU: YNNPACK fusions off) and with
XLA's defaults. The two versions then run in turns, each on its own state;
figures are medians of `--repeats` timed rounds. Prints train images/s and
milliseconds per network evaluation for both, and their ratios, and writes
them as JSON (`--out`).
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import MODELS, JaxSide, benchmark_images

from jaxdiff import compiler


@contextlib.contextmanager
def xla_defaults():
    """Inside: `jaxdiff.compiler.jit` compiles with XLA's default options."""
    saved = compiler.compiler_options
    compiler.compiler_options = lambda: {}
    try:
        yield
    finally:
        compiler.compiler_options = saved


def compare(model_name: str, args) -> dict:
    """Times one model's train call and sampler built both ways, in turns."""
    config = MODELS[model_name]
    images, labels = benchmark_images(config().data.dataset, args.data_npz_dir)
    sides = {"jaxdiff": JaxSide(config(), args, images, labels)}  # Built and warmed up.
    with xla_defaults():
        sides["xla_default"] = JaxSide(config(), args, images, labels)
    times = {(name, kind): [] for name in sides for kind in ("train", "sample")}
    for _ in range(args.repeats):
        for name, side in sides.items():
            start = time.perf_counter()
            side.train()
            middle = time.perf_counter()
            side.sample()
            times[(name, "train")].append(middle - start)
            times[(name, "sample")].append(time.perf_counter() - middle)
    row = {"model": model_name, "batch": args.batch, "options": compiler.compiler_options()}
    for name in sides:
        train_s = statistics.median(times[(name, "train")])
        sample_s = statistics.median(times[(name, "sample")])
        row[f"{name}_train_images_per_sec"] = round(args.batch * args.train_steps / train_s, 1)
        row[f"{name}_ms_per_eval"] = round(1000 * sample_s / args.sample_steps, 2)
    row["train_speedup"] = round(
        row["jaxdiff_train_images_per_sec"] / row["xla_default_train_images_per_sec"], 2
    )
    row["sample_speedup"] = round(row["xla_default_ms_per_eval"] / row["jaxdiff_ms_per_eval"], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mnist,seed_cond,fashion_mnist,cifar10_cond")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train_steps", type=int, default=4)
    parser.add_argument("--sample_steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data_npz_dir", default="")
    parser.add_argument(
        "--out", default=f"benchmarks/results/xla_options_{jax.default_backend()}.json"
    )
    args = parser.parse_args()
    args.sample_batch, args.steps_per_call, args.precision = args.batch, 0, "fp32"
    for name in args.models.split(","):
        if name not in MODELS:
            sys.exit(f"error: unknown model {name!r}; choose from {sorted(MODELS)}")
    if not compiler.compiler_options():
        print(f"jaxdiff sets no XLA options on {jax.default_backend()}: both versions are the same")
    rows = []
    print(f"{'model':20s} {'train img/s':>24s} {'ms/eval':>20s}   jaxdiff's options vs XLA's")
    for name in args.models.split(","):
        row = compare(name, args)
        rows.append(row)
        print(
            f"{name:20s} {row['jaxdiff_train_images_per_sec']:10.1f} vs "
            f"{row['xla_default_train_images_per_sec']:9.1f}"
            f"  {row['jaxdiff_ms_per_eval']:8.2f} vs {row['xla_default_ms_per_eval']:8.2f}"
            f"   train {row['train_speedup']:.2f}x, sample {row['sample_speedup']:.2f}x",
            flush=True,
        )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
