"""jaxdiff's XLA compiler options against XLA's defaults: the same programs, timed in turns.

    python benchmarks/probes/xla_options.py --models=mnist,seed_cond,fashion_mnist,cifar10_cond
    python benchmarks/probes/xla_options.py --kernels

For each model, jaxdiff's train call and Euler-Maruyama sampler are built
twice, as benchmarks/run.py builds them: compiled with
`jaxdiff.core.compiler.compiler_options()` (on CPU: no YNNPACK convolutions) and with
XLA's defaults. The two versions then run in turns, each on its own state;
figures are medians of `--repeats` timed rounds. Prints train images/s and
milliseconds per network evaluation for both, and their ratios, and writes
them as JSON (`--out`). With `--kernels`, it times single kernels instead (a 3x3
convolution, its kernel gradient, a sum over batch and space, a dot) compiled
three ways: with XLA's defaults, with YNNPACK fusions off, and with jaxdiff's
options.
"""

import argparse
import contextlib
import os
import sys

import jax
import jax.numpy as jnp

# The repository (for jaxdiff and tests) and benchmarks/ (for run.py and timing.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from run import MODELS, JaxSide, benchmark_images
from timing import time_in_turns, time_sides_in_turns, write_json

from jaxdiff.core import compiler


@contextlib.contextmanager
def xla_defaults():
    """Inside: `jaxdiff.core.compiler.jit` compiles with XLA's default options."""
    saved = compiler.compiler_options
    compiler.compiler_options = lambda: {}
    try:
        yield
    finally:
        compiler.compiler_options = saved


YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"


def kernels() -> dict:
    """The kernels of a U-Net level (batch 32, 28x28, 96 -> 32 channels)."""
    keys = jax.random.split(jax.random.key(0), 4)
    maps = jax.random.normal(keys[0], (32, 28, 28, 96))
    kernel = jax.random.normal(keys[1], (3, 3, 96, 32))
    cotangent = jax.random.normal(keys[2], (32, 28, 28, 32))
    tokens, weights = jax.random.normal(keys[3], (2, 2048, 256))
    numbers = ("NHWC", "HWIO", "NHWC")

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=numbers)

    def kernel_gradient(x, w, dy):
        return jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]

    return {
        "conv 3x3": (conv, (maps, kernel)),
        "conv 3x3 kernel gradient": (kernel_gradient, (maps, kernel, cotangent)),
        "sum over batch and space": (lambda x: jnp.sum(x, (0, 1, 2)), (maps,)),
        "dot 2048x256x256": (jnp.dot, (tokens, weights[:256])),
    }


def compare_kernels(repeats: int) -> list[dict]:
    """Milliseconds per kernel under each option set, timed in turns."""
    option_sets = {
        "xla_defaults": {},
        "ynnpack_off": {YNN_OPTION: ""},
        "jaxdiff": compiler.compiler_options(),
    }
    rows = []
    for name, (fun, args) in kernels().items():
        compiled = {k: jax.jit(fun, compiler_options=o) for k, o in option_sets.items()}
        seconds = time_in_turns(compiled, args, repeats)
        row = {"kernel": name}
        row.update({f"{k}_ms": round(1000 * v, 2) for k, v in seconds.items()})
        rows.append(row)
        print(f"{name:26s}" + "".join(f" {row[f'{k}_ms']:14.2f}" for k in option_sets), flush=True)
    return rows


def compare(model_name: str, args) -> dict:
    """Times one model's train call and sampler built both ways, in turns."""
    config = MODELS[model_name]
    images, labels = benchmark_images(config().data.dataset, args.data_npz_dir)
    sides = {"jaxdiff": JaxSide(config(), args, images, labels)}  # Built and warmed up.
    with xla_defaults():
        sides["xla_default"] = JaxSide(config(), args, images, labels)
    seconds = time_sides_in_turns(sides, args.repeats)
    row = {"model": model_name, "batch": args.batch, "options": compiler.compiler_options()}
    for name in sides:
        train_s, sample_s = seconds[(name, "train")], seconds[(name, "sample")]
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
        "--kernels", action="store_true", help="time single kernels instead of the models"
    )
    parser.add_argument(
        "--out", default=f"benchmarks/results/xla_options_{jax.default_backend()}.json"
    )
    args = parser.parse_args()
    args.sample_batch, args.steps_per_call, args.precision = args.batch, 0, "fp32"
    if args.kernels:
        print(f"{'ms per call':26s} {'XLA defaults':>14s} {'YNNPACK off':>14s} {'jaxdiff':>14s}")
        write_json(compare_kernels(20 * args.repeats), args.out.replace(".json", "_kernels.json"))
        return
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
    write_json(rows, args.out)


if __name__ == "__main__":
    main()
