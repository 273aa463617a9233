"""GroupNorm: flax's `nn.GroupNorm` against `jaxdiff.models.layers.GroupNorm`.

    python benchmarks/group_norm.py                # batch 32 on CPU, 256 elsewhere

The two compute the same function with the same parameters; jaxdiff's reduces
per channel first and normalises with one per-channel multiply-add, where flax
reduces and normalises through a (batch, pixels, groups, channels per group)
view. Times, compiled as jaxdiff compiles (`jaxdiff.compiler`) and in turns,
medians of `--repeats`:

- each U-Net's GroupNorm + swish at its map sizes, forward (sampling) and
  forward + gradients of input and parameters (training);
- whole score networks built both ways, the forward pass and the gradient of
  a loss, at the same batch.

Prints the tables and writes them as JSON (`--out`).
"""

import argparse
import contextlib
import importlib
import json
import os
import statistics
import sys
import time
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxdiff.compiler import jit
from jaxdiff.data import dataset_info
from jaxdiff.models import create_model, layers, unet
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
MODELS = ("mnist", "fashion_mnist", "cifar10")
KINDS = ("flax", "jaxdiff")


def time_in_turns(programs: dict, args: tuple, repeats: int) -> dict:
    """Median seconds of each program, called in turns after one warm-up call each."""
    times = {key: [] for key in programs}
    for program in programs.values():
        jax.block_until_ready(program(*args))
    for _ in range(repeats):
        for key, program in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(program(*args))
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def layer_rows(batch: int, repeats: int) -> list[dict]:
    rows = []
    for config, side, channels in LAYERS:
        x = 1.0 + jax.random.normal(jax.random.key(0), (batch, side, side, channels))
        programs, params = {}, None
        for kind, norm in zip(KINDS, (nn.GroupNorm, GroupNorm), strict=True):
            layer = norm(group_count(channels))
            params = params or layer.init(jax.random.key(1), x)
            forward = lambda p, x, layer=layer: nn.swish(layer.apply(p, x))  # noqa: E731
            loss = lambda p, x, f=forward: jnp.sum(f(p, x) ** 2)  # noqa: E731
            programs[("forward", kind)] = jit(forward)
            programs[("forward+gradients", kind)] = jit(jax.value_and_grad(loss, (0, 1)))
        seconds = time_in_turns(programs, (params, x), repeats)
        for kind in ("forward", "forward+gradients"):
            rows.append(row(f"{config} {side}x{side}, {channels} ch", kind, batch, seconds))
    return rows


@contextlib.contextmanager
def networks_using(norm: type[nn.Module]):
    """Builds and traces the score networks with `norm` as their GroupNorm."""
    # The networks look GroupNorm up in these modules when they are traced.
    with mock.patch.object(layers, "GroupNorm", norm), mock.patch.object(unet, "GroupNorm", norm):
        yield


def model_rows(batch: int, repeats: int) -> list[dict]:
    rows = []
    for name in MODELS:
        config = importlib.import_module(f"configs.{name}").get_config()
        image_shape, num_classes = dataset_info(config.data.dataset)
        x = jax.random.normal(jax.random.key(0), (batch, *image_shape))
        t = jnp.linspace(0.1, 1.0, batch)
        programs, variables = {}, None
        for kind, norm in zip(KINDS, (nn.GroupNorm, GroupNorm), strict=True):
            with networks_using(norm):
                model = create_model(config.model, image_shape, num_classes=num_classes)
                variables = variables or model.init(jax.random.key(1), x, t)
                # A new function object per network: jit's trace cache would take two
                # equal flax modules' bound `apply` for one function.
                forward = jit(lambda v, x, t, model=model: model.apply(v, x, t))
                loss = lambda v, x, t, model=model: jnp.sum(model.apply(v, x, t) ** 2)  # noqa: E731
                gradient = jit(jax.grad(loss))
                # Traced (and compiled) here, while the patch is in place.
                jax.block_until_ready((forward(variables, x, t), gradient(variables, x, t)))
            programs[("forward", kind)] = forward
            programs[("gradient", kind)] = gradient
        seconds = time_in_turns(programs, (variables, x, t), repeats)
        for kind in ("forward", "gradient"):
            rows.append(row(name, kind, batch, seconds))
    return rows


def row(what: str, kind: str, batch: int, seconds: dict) -> dict:
    """Prints and returns one table row: `kind` pass of `what`, both ways."""
    ms = {k: 1000 * seconds[(kind, k)] for k in KINDS}
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
    parser.add_argument("--model_repeats", type=int, default=7)
    parser.add_argument(
        "--out", default=f"benchmarks/results/group_norm_{jax.default_backend()}.json"
    )
    args = parser.parse_args()
    header = f"{'flax ms':>10s} {'jaxdiff ms':>11s} {'speed-up':>9s}"
    print(f"{'GroupNorm + swish':28s} {'pass':18s} {header}")
    rows = {"layers": layer_rows(args.batch, args.repeats)}
    print(f"\n{'score network':28s} {'pass':18s} {header}")
    rows["models"] = model_rows(args.batch, args.model_repeats)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
