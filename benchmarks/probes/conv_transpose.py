"""jaxdiff's seed-net convolutions against plain `lax` ones, layer by layer.

    python benchmarks/probes/conv_transpose.py                 # batch 64 on CPU, 1024 elsewhere

The seed net's four encoder convs (28->26 stride 1, then 26->12->5->2 stride
2; 1->32->64->128->256 channels) as `jaxdiff.ops.strided_conv` and
as `lax.conv_general_dilated` (what flax's `nn.Conv` runs), and its four
decoder transposed convs (2->5, 5->12, 12->26 stride 2, 26->28 stride 1;
256->128->64->32->1 channels) as `jaxdiff.ops.conv_transpose` and
as flax's `nn.ConvTranspose` computes them (`lax.conv_transpose`, then zero
padding to the output size). For each layer, and for all of them in one
program, times the forward pass alone (sampling), forward + gradients of
input and kernel (training) and forward + the tangent in the input (forward
mode: the likelihood's ODE), the two implementations in turns; medians of
`--repeats`. Prints the table and writes it as JSON (`--out`).
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

# The repository, for jaxdiff.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jaxdiff.ops import conv_transpose, strided_conv

# (input side, input channels, output channels, stride, output side) of the seed net.
SEED_ENCODER = ((28, 1, 32, 1, 26), (26, 32, 64, 2, 12), (12, 64, 128, 2, 5), (5, 128, 256, 2, 2))
SEED_DECODER = ((2, 256, 128, 2, 5), (5, 128, 64, 2, 12), (12, 64, 32, 2, 26), (26, 32, 1, 1, 28))


def lax_conv(x, kernel, stride, output_size):
    """What flax's nn.Conv(padding="VALID", use_bias=False) computes."""
    del output_size
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def lax_conv_transpose(x, kernel, stride, output_size):
    """What flax's nn.ConvTranspose(padding="VALID") computes, padded to output_size."""
    y = jax.lax.conv_transpose(
        x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    pad = ((0, 0), (0, output_size[0] - y.shape[1]), (0, output_size[1] - y.shape[2]), (0, 0))
    return jnp.pad(y, pad)


# layer kind -> (its layers, {implementation name: function}); jaxdiff's first.
KINDS = {
    "conv": (
        SEED_ENCODER,
        {"jaxdiff": lambda x, k, s, size: strided_conv(x, k, s), "lax": lax_conv},
    ),
    "conv_transpose": (SEED_DECODER, {"jaxdiff": conv_transpose, "lax": lax_conv_transpose}),
}


def programs(fn, layers, dtype):
    """Jitted forward and forward+gradients over `layers`."""

    def forward(xs, kernels):
        return [
            fn(x.astype(dtype), k.astype(dtype), stride, (side, side))
            for x, k, (_, _, _, stride, side) in zip(xs, kernels, layers, strict=True)
        ]

    def loss(xs, kernels):
        return sum(jnp.sum(y.astype(jnp.float32) ** 2) for y in forward(xs, kernels))

    def tangent(xs, kernels):  # Forward mode in the input, as the likelihood's ODE runs it.
        return jax.jvp(lambda xs: forward(xs, kernels), (xs,), (xs,))

    return {
        "forward": jax.jit(forward),
        "forward+gradients": jax.jit(jax.value_and_grad(loss, (0, 1))),
        "jvp": jax.jit(tangent),
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
    keys = iter(jax.random.split(jax.random.key(0), 4 * len(SEED_DECODER)))
    # (kind, layer index or "all") -> inputs and {implementation: programs}
    cases = {}
    for kind, (layers, implementations) in KINDS.items():
        xs = [jax.random.normal(next(keys), (args.batch, s, s, c)) for s, c, _, _, _ in layers]
        kernels = [
            jax.random.normal(next(keys), (3, 3, cin, cout)) * 0.05 for _, cin, cout, _, _ in layers
        ]
        for index in [*range(len(layers)), "all"]:
            chosen = range(len(layers)) if index == "all" else [index]
            subset = [layers[i] for i in chosen]
            inputs = ([xs[i] for i in chosen], [kernels[i] for i in chosen])
            progs = {name: programs(fn, subset, dtype) for name, fn in implementations.items()}
            cases[(kind, index)] = (subset, inputs, progs)
    for _, inputs, progs in cases.values():  # Compile and warm up.
        for by_program in progs.values():
            for program in by_program.values():
                jax.block_until_ready(program(*inputs))
    times = {
        (case, name, p): []
        for case, (_, _, progs) in cases.items()
        for name, by_program in progs.items()
        for p in by_program
    }
    for _ in range(args.repeats):  # In turns, so a noisy machine slows both alike.
        for case, (_, inputs, progs) in cases.items():
            for name, by_program in progs.items():
                for p, program in by_program.items():
                    start = time.perf_counter()
                    jax.block_until_ready(program(*inputs))
                    times[(case, name, p)].append(time.perf_counter() - start)
    device = jax.devices()[0].device_kind
    print(f"{device}, batch {args.batch}, {args.precision}, ms, median of {args.repeats}:")
    print(f"  {'layer':34s} {'program':18s} {'jaxdiff':>9s} {'lax':>9s}  lax/jaxdiff")
    rows = []
    for (kind, index), (subset, _, _) in cases.items():
        if index == "all":
            layer = f"{kind}: all {len(subset)}"
        else:
            side, cin, cout, stride, out_side = subset[0]
            layer = f"{kind} {side}->{out_side} {cin}->{cout} s{stride}"
        for p in ("forward", "forward+gradients", "jvp"):
            ms = {
                name: 1000 * statistics.median(times[((kind, index), name, p)])
                for name in KINDS[kind][1]
            }
            ratio = ms["lax"] / ms["jaxdiff"]
            rows.append({"layer": layer, "program": p, "ms": ms, "lax_over_jaxdiff": ratio})
            print(f"  {layer:34s} {p:18s} {ms['jaxdiff']:9.2f} {ms['lax']:9.2f}  {ratio:6.2f}x")
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
