"""jaxdiff's transposed convolution against `lax.conv_transpose`, on the seed decoder's layers.

    python benchmarks/conv_transpose.py                 # batch 64 on CPU, 1024 elsewhere

The four transposed convs of the seed net's decoder (2->5, 5->12, 12->26 with
stride 2, 26->28 with stride 1; 256->128->64->32->1 channels), each as
`jaxdiff.models.layers.conv_transpose` and as flax's `nn.ConvTranspose`
computes it (`lax.conv_transpose`, then zero padding to the output size).
Times the forward pass alone (sampling) and forward + gradients of input and
kernel (training), the two implementations in turns; medians of `--repeats`.
Prints the table and writes it as JSON (`--out`).
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxdiff.models.layers import conv_transpose

# (input side, input channels, output channels, stride, output side) of the seed decoder.
SEED_DECODER = ((2, 256, 128, 2, 5), (5, 128, 64, 2, 12), (12, 64, 32, 2, 26), (26, 32, 1, 1, 28))


def lax_conv_transpose(x, kernel, stride, output_size):
    """What flax's nn.ConvTranspose(padding="VALID") computes, padded to output_size."""
    y = jax.lax.conv_transpose(
        x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    pad = ((0, 0), (0, output_size[0] - y.shape[1]), (0, output_size[1] - y.shape[2]), (0, 0))
    return jnp.pad(y, pad)


IMPLEMENTATIONS = {"jaxdiff": conv_transpose, "lax.conv_transpose": lax_conv_transpose}


def programs(fn, dtype):
    """Jitted forward and forward+gradients over all decoder layers."""

    def forward(xs, kernels):
        return [
            fn(x.astype(dtype), k.astype(dtype), stride, (side, side))
            for x, k, (_, _, _, stride, side) in zip(xs, kernels, SEED_DECODER, strict=True)
        ]

    def loss(xs, kernels):
        return sum(jnp.sum(y.astype(jnp.float32) ** 2) for y in forward(xs, kernels))

    return {
        "forward": jax.jit(forward),
        "forward+gradients": jax.jit(jax.value_and_grad(loss, (0, 1))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    on_cpu = jax.default_backend() == "cpu"
    parser.add_argument("--batch", type=int, default=64 if on_cpu else 1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--out", default="", help="default: results/conv_transpose_<backend>.json")
    args = parser.parse_args()
    out = args.out or f"benchmarks/results/conv_transpose_{jax.default_backend()}.json"
    dtype = jnp.bfloat16 if args.precision == "bf16" else jnp.float32
    keys = iter(jax.random.split(jax.random.key(0), 2 * len(SEED_DECODER)))
    xs = [jax.random.normal(next(keys), (args.batch, s, s, c)) for s, c, _, _, _ in SEED_DECODER]
    kernels = [
        jax.random.normal(next(keys), (3, 3, cin, cout)) * 0.05
        for _, cin, cout, _, _ in SEED_DECODER
    ]
    compiled = {name: programs(fn, dtype) for name, fn in IMPLEMENTATIONS.items()}
    for progs in compiled.values():  # Compile and warm up.
        for program in progs.values():
            jax.block_until_ready(program(xs, kernels))
    times = {(name, p): [] for name, progs in compiled.items() for p in progs}
    for _ in range(args.repeats):  # In turns, so a noisy machine slows both alike.
        for name, progs in compiled.items():
            for p, program in progs.items():
                start = time.perf_counter()
                jax.block_until_ready(program(xs, kernels))
                times[(name, p)].append(time.perf_counter() - start)
    device = jax.devices()[0].device_kind
    print(f"{device}, batch {args.batch}, {args.precision}, median of {args.repeats}:")
    rows = []
    for p in ("forward", "forward+gradients"):
        ms = {name: 1000 * statistics.median(times[(name, p)]) for name in compiled}
        ratio = ms["lax.conv_transpose"] / ms["jaxdiff"]
        rows.append({"program": p, "ms": ms, "lax_over_jaxdiff": ratio})
        print(
            f"  {p:18s} jaxdiff {ms['jaxdiff']:8.2f} ms  lax.conv_transpose "
            f"{ms['lax.conv_transpose']:8.2f} ms  ({ratio:.2f}x)"
        )
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(
            {"device": device, "batch": args.batch, "precision": args.precision, "rows": rows},
            f,
            indent=1,
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
