"""The residual U-Nets' upsampling layers: resize + conv against `upsample2x_conv`.

    python benchmarks/probes/upsample_conv.py                  # batch 32 on CPU, 256 elsewhere

Each decoder level of the Fashion-MNIST and CIFAR-10 U-Nets upsamples its map
2x (nearest) and applies a 3x3 SAME conv. `jaxdiff.ops.upsample2x_conv`
computes the same function on the small map, at 4/9 of the multiply-adds. For
each layer shape, times the forward pass (sampling) and forward + gradients of
input and kernel (training) of the two, compiled as jaxdiff compiles (the
options of `jaxdiff.core.compiler`), in turns; medians of `--repeats`. Prints the
table and writes it as JSON (`--out`).
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp

# The repository (for jaxdiff) and benchmarks/ (for run.py and timing.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from timing import time_in_turns, write_json

from jaxdiff.core.compiler import jit
from jaxdiff.models.layers import resize_to
from jaxdiff.ops import upsample2x_conv

# (config, input side, channels in = out) of each 2x upsampling layer.
LAYERS = (
    ("fashion_mnist", 7, 128),
    ("fashion_mnist", 14, 64),
    ("cifar10", 4, 128),
    ("cifar10", 8, 128),
    ("cifar10", 16, 128),
)


def resize_then_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """What the U-Nets computed before: nearest 2x resize, then flax's 3x3 SAME conv."""
    up = resize_to(x, 2 * x.shape[1], 2 * x.shape[2])
    return jax.lax.conv_general_dilated(
        up, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    on_cpu = jax.default_backend() == "cpu"
    parser.add_argument("--batch", type=int, default=32 if on_cpu else 256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--out", default=f"benchmarks/results/upsample_conv_{jax.default_backend()}.json"
    )
    args = parser.parse_args()
    implementations = {"resize_then_conv": resize_then_conv, "upsample2x_conv": upsample2x_conv}
    rows = []
    header = f"{'resize+conv ms':>15s} {'upsample2x ms':>14s} {'speed-up':>9s}"
    print(f"{'layer':28s} {'pass':18s} {header}")
    for config, side, channels in LAYERS:
        keys = jax.random.split(jax.random.key(0))
        x = jax.random.normal(keys[0], (args.batch, side, side, channels))
        kernel = 0.1 * jax.random.normal(keys[1], (3, 3, channels, channels))
        programs = {}
        for name, fn in implementations.items():
            loss = lambda x, k, fn=fn: jnp.sum(fn(x, k) ** 2)  # noqa: E731
            programs[("forward", name)] = jit(fn)
            programs[("forward+gradients", name)] = jit(jax.value_and_grad(loss, (0, 1)))
        seconds = time_in_turns(programs, (x, kernel), args.repeats)
        layer = f"{config} {side}->{2 * side}, {channels} ch"
        for kind in ("forward", "forward+gradients"):
            ms = {name: 1000 * seconds[(kind, name)] for name in implementations}
            speedup = ms["resize_then_conv"] / ms["upsample2x_conv"]
            rows.append(
                {
                    "layer": layer,
                    "pass": kind,
                    "batch": args.batch,
                    **{f"{name}_ms": round(v, 2) for name, v in ms.items()},
                    "speedup": round(speedup, 2),
                }
            )
            print(
                f"{layer:28s} {kind:18s} {ms['resize_then_conv']:15.2f} "
                f"{ms['upsample2x_conv']:14.2f} {speedup:8.2f}x",
                flush=True,
            )
    write_json(rows, args.out)


if __name__ == "__main__":
    main()
