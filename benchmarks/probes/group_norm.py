"""GroupNorm: flax's `nn.GroupNorm` against `jaxdiff.models.layers.GroupNorm` (`jaxdiff.ops`).

    python benchmarks/probes/group_norm.py                # batch 32 on CPU, 256 elsewhere

The two compute the same function with the same parameters. flax reduces and
normalises through a (batch, pixels, groups, channels per group) view;
jaxdiff's `ops.group_norm` does the same wherever a derivative is taken
(training), and otherwise (sampling) reduces per channel first and normalises
with one per-channel multiply-add. Times, compiled as jaxdiff compiles (`jaxdiff.core.compiler`)
and in turns, medians of `--repeats`:

- each U-Net's GroupNorm + swish at its map sizes, flax's against the
  per-channel form: forward (sampling) and forward + gradients of input and
  parameters;
- whole models built both ways, as benchmarks/run.py builds them: the train
  call (`--train_steps` steps) and the Euler-Maruyama sampler
  (`--sample_steps` steps), at the same batch.

Prints the tables and writes them as JSON (`--out`).
"""

import argparse
import contextlib
import os
import sys
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp

# The repository (for jaxdiff) and benchmarks/ (for run.py and timing.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from run import MODELS, JaxSide, benchmark_images
from timing import time_in_turns, time_sides_in_turns, write_json

from jaxdiff.core.compiler import jit
from jaxdiff.models import layers, unet
from jaxdiff.models.layers import GroupNorm, group_count

# (config, map side, channels) of GroupNorm + swish layers in the U-Nets.
LAYERS = (
    ("fashion_mnist", 28, 32),
    ("fashion_mnist", 14, 64),
    ("fashion_mnist", 7, 128),
    ("cifar10", 32, 64),
    ("cifar10", 32, 192),
    ("cifar10", 16, 128),
    ("cifar10", 8, 256),
)
KINDS = ("flax", "jaxdiff")


def layer_rows(batch: int, repeats: int) -> list[dict]:
    rows = []
    for config, side, channels in LAYERS:
        x = 1.0 + jax.random.normal(jax.random.key(0), (batch, side, side, channels))
        programs, params = {}, None
        layers_both_ways = (nn.GroupNorm, GroupNorm)
        for kind, norm in zip(KINDS, layers_both_ways, strict=True):
            layer = norm(group_count(channels))
            params = params or layer.init(jax.random.key(1), x)
            forward = lambda p, x, layer=layer: nn.swish(layer.apply(p, x))  # noqa: E731
            loss = lambda p, x, f=forward: jnp.sum(f(p, x) ** 2)  # noqa: E731
            programs[(kind, "forward")] = jit(forward)
            programs[(kind, "forward+gradients")] = jit(jax.value_and_grad(loss, (0, 1)))
        seconds = time_in_turns(programs, (params, x), repeats)
        for kind in ("forward", "forward+gradients"):
            rows.append(row(f"{config} {side}x{side}, {channels} ch", kind, batch, seconds))
    return rows


def flax_group_norm(num_groups: int, dtype=None) -> nn.Module:
    """flax's GroupNorm, called as the networks call jaxdiff's."""
    return nn.GroupNorm(num_groups, dtype=dtype)


@contextlib.contextmanager
def networks_using(norm):
    """Inside: the score networks are built with `norm` as their GroupNorm."""
    # The networks look GroupNorm up in these modules when they are traced,
    # which JaxSide does when it warms its programs up.
    with mock.patch.object(layers, "GroupNorm", norm), mock.patch.object(unet, "GroupNorm", norm):
        yield


def model_rows(args) -> list[dict]:
    """Each model's train call and sampler, as benchmarks/run.py builds them, both ways."""
    rows = []
    for name in args.models.split(","):
        config = MODELS[name]
        images, labels = benchmark_images(config().data.dataset)
        sides = {}
        for kind, norm in zip(KINDS, (flax_group_norm, GroupNorm), strict=True):
            with networks_using(norm):
                sides[kind] = JaxSide(config(), args, images, labels)  # Built and warmed up.
        seconds = time_sides_in_turns(sides, args.model_repeats)
        rows.append(row(name, "train", args.batch, seconds))
        rows.append(row(name, "sample", args.batch, seconds))
    return rows


def row(what: str, kind: str, batch: int, seconds: dict) -> dict:
    """Prints and returns one table row: the `kind` pass of `what`, seconds keyed (way, pass)."""
    ms = {k: 1000 * seconds[(k, kind)] for k in KINDS}
    speedup = ms["flax"] / ms["jaxdiff"]
    print(f"{what:28s} {kind:18s} {ms['flax']:10.2f} {ms['jaxdiff']:11.2f} {speedup:8.2f}x")
    return {
        "what": what,
        "pass": kind,
        "batch": batch,
        "flax_ms": round(ms["flax"], 2),
        "jaxdiff_ms": round(ms["jaxdiff"], 2),
        "speedup": round(speedup, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    on_cpu = jax.default_backend() == "cpu"
    parser.add_argument("--batch", type=int, default=32 if on_cpu else 256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--models", default="seed_cond,mnist,fashion_mnist,cifar10")
    parser.add_argument("--train_steps", type=int, default=2)
    parser.add_argument("--sample_steps", type=int, default=5)
    parser.add_argument("--model_repeats", type=int, default=5)
    parser.add_argument(
        "--out", default=f"benchmarks/results/group_norm_{jax.default_backend()}.json"
    )
    args = parser.parse_args()
    for name in args.models.split(","):
        if name not in MODELS:
            sys.exit(f"error: unknown model {name!r}; choose from {sorted(MODELS)}")
    args.sample_batch, args.steps_per_call, args.precision = args.batch, 0, "fp32"
    header = f"{'flax ms':>10s} {'jaxdiff ms':>11s} {'speed-up':>9s}"
    print(f"{'GroupNorm + swish':28s} {'pass':18s} {header}")
    rows = {"layers": layer_rows(args.batch, args.repeats)}
    print(f"\n{'model':28s} {'call':18s} {header}")
    rows["models"] = model_rows(args)
    write_json(rows, args.out)


if __name__ == "__main__":
    main()
