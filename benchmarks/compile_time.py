"""Where a config's first call goes: tracing, lowering and XLA compilation, per program.

    python benchmarks/compile_time.py                       # cifar10_cond, every variant
    python benchmarks/compile_time.py --config=mnist_cond --variants=default

For each variant, a fresh process builds the config's experiment and times,
for the train call (`training.steps_per_call` steps, the batch of `--batch`)
and for the sampler (`--sample_steps` steps of `--sampler` on `--sample_batch`
samples), the three phases of a first call: tracing the Python into a jaxpr,
lowering it to StableHLO, and XLA's compilation; then the median of
`--timed_runs` further calls (a faster compile must not cost run time). With
`--parts`, the train step's parts (forward, gradient, optimizer and EMA
update) are also compiled alone, with their StableHLO sizes. Variants:

- `default`: as `main.py` compiles (no persistent cache);
- `cache_cold`, `cache_warm`: JAX's persistent compilation cache in a new
  folder, first empty, then filled by the cold run (a resumed or repeated job);
- `autotune_<n>` (GPU only): `--xla_gpu_autotune_level=n` (XLA's default is 4).

Prints one line per variant and program, and writes `--out` (.json). Each
variant runs in its own process, so no in-process cache carries over.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS_CPU = ("default", "cache_cold", "cache_warm")
VARIANTS_GPU = (*VARIANTS_CPU, "autotune_1", "autotune_0")


def measure(args) -> dict:
    """The child process: times the phases of the train call and the sampler."""
    import jax
    import jax.numpy as jnp
    import jaxdiff.configs as configs
    from common import labelled_sampler, timed_setup

    from jaxdiff.core.compiler import jit
    from jaxdiff.data import batches

    start = time.perf_counter()
    config = configs.get_config(args.config)
    setup = timed_setup(config, args, args.sampler, 4 * max(args.steps_per_call, 1))
    experiment = setup.experiment
    key = jax.random.key(0)
    state = setup.init_state(key)
    images = jnp.zeros((1024, *experiment.image_shape), jnp.uint8)
    labels = jnp.zeros((1024,), jnp.int32)
    dataset = batches.to_device(images, labels, experiment.mesh)
    jax.block_until_ready(state)
    setup_s = time.perf_counter() - start

    sample = labelled_sampler(experiment, experiment.config.sampling, args.sample_batch)

    programs = {
        "train": (setup.train_call, (state, key, dataset)),
        "sample": (jit(sample), (state.ema_params, key)),
    }
    result = {"setup_s": setup_s, "backend": jax.default_backend()}
    if args.parts:
        result["parts"] = train_step_parts(experiment, setup.tx, state, key, dataset)
    for name, (fn, fn_args) in programs.items():
        t0 = time.perf_counter()
        traced = fn.trace(*fn_args)
        t1 = time.perf_counter()
        lowered = traced.lower()
        t2 = time.perf_counter()
        compiled = lowered.compile()
        t3 = time.perf_counter()
        out = compiled(*fn_args)
        jax.block_until_ready(out)
        t4 = time.perf_counter()
        if name == "train":
            state = out[0]
            fn_args = (state, key, dataset)
        runs = []  # Steady-state speed, so that a faster compile is not bought with a slower run.
        for _ in range(args.timed_runs):
            t5 = time.perf_counter()
            out = compiled(*fn_args)
            jax.block_until_ready(out)
            runs.append(time.perf_counter() - t5)
            if name == "train":
                fn_args = (out[0], key, dataset)
        if name == "train":
            programs["sample"] = (programs["sample"][0], (out[0].ema_params, key))
        result[name] = {
            "steady_ms": 1000 * statistics.median(runs) if runs else None,
            "trace_s": t1 - t0,
            "lower_s": t2 - t1,
            "compile_s": t3 - t2,
            "first_run_s": t4 - t3,
            "first_call_s": t4 - t0,
            "hlo_ops": lowered.as_text().count("\n"),
        }
    return result


def train_step_parts(experiment, tx, state, key, dataset) -> dict:
    """Compile seconds and StableHLO lines of one train step's parts, each jitted alone."""
    import jax

    from jaxdiff.core import parallel
    from jaxdiff.diffusion.losses import dsm_loss
    from jaxdiff.diffusion.preconditioning import make_score_fn
    from jaxdiff.training.loop import apply_update
    from jaxdiff.training.score import draw_training_batch, make_train_step

    config, model = experiment.config, experiment.model
    batch_sharding = parallel.batch_sharded(experiment.mesh)

    def loss(params, key):
        x0, labels = draw_training_batch(
            key, dataset, config, experiment.num_classes, batch_sharding
        )
        score_fn = make_score_fn(
            model, params, experiment.sde, config.model, train=True, dropout_key=key, labels=labels
        )
        return dsm_loss(score_fn, experiment.sde, x0, key, config.training.eps)

    step = make_train_step(model, experiment.sde, tx, config, experiment.mesh)

    grads = jax.tree.map(jax.numpy.zeros_like, state.params)
    parts = {
        "forward (loss)": (loss, (state.params, key)),
        "loss and gradient": (jax.grad(loss), (state.params, key)),
        "optimizer and EMA update": (
            lambda s, g: apply_update(s, g, tx, config.training.ema_decay),
            (state, grads),
        ),
        "whole step": (lambda state, key: step(state, key, dataset), (state, key)),
    }
    timings = {}
    for name, (fn, fn_args) in parts.items():
        lowered = jax.jit(fn).trace(*fn_args).lower()
        start = time.perf_counter()
        lowered.compile()
        timings[name] = {
            "compile_s": time.perf_counter() - start,
            "hlo_lines": lowered.as_text().count("\n"),
        }
    return timings


def run_variant(variant: str, args, cache_dir: str) -> dict:
    """Runs `measure` in a fresh process under the variant's settings."""
    env = dict(os.environ)
    if variant.startswith("cache_"):
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    else:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if variant.startswith("autotune_"):
        level = variant.split("_")[1]
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_gpu_autotune_level={level}".strip()
    child = [sys.executable, os.path.abspath(__file__), "--child", *sys.argv[1:]]
    done = subprocess.run(child, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": tail[:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="cifar10_cond")
    parser.add_argument("--variants", default="", help="comma-separated; empty: all that apply")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps_per_call", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--sampler", default="euler_maruyama")
    parser.add_argument("--sample_steps", type=int, default=100)
    parser.add_argument("--sample_batch", type=int, default=500)
    parser.add_argument(
        "--parts", action="store_true", help="also compile the train step's parts alone"
    )
    parser.add_argument("--timed_runs", type=int, default=5, help="steady-state runs timed")
    parser.add_argument("--out", default="benchmarks/results/compile_time.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return

    import jax

    backend = jax.default_backend()
    variants = args.variants.split(",") if args.variants else None
    variants = variants or list(VARIANTS_CPU if backend == "cpu" else VARIANTS_GPU)
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for variant in variants:
            result = run_variant(variant, args, cache_dir)
            row = {
                "config": args.config,
                "variant": variant,
                "device": jax.devices()[0].device_kind,
            }
            row.update(result)
            rows.append(row)
            if "error" in result:
                print(f"{variant:12s} failed: {result['error']}", flush=True)
            for part, p in result.get("parts", {}).items():
                print(
                    f"{variant:12s} part {part:26s} compile {p['compile_s']:6.1f} s  "
                    f"{p['hlo_lines']:7d} StableHLO lines",
                    flush=True,
                )
            for program in ("train", "sample"):
                if program in result:
                    p = result[program]
                    print(
                        f"{variant:12s} {program:6s} trace {p['trace_s']:6.1f} s  "
                        f"lower {p['lower_s']:6.1f} s  compile {p['compile_s']:6.1f} s  "
                        f"first run {p['first_run_s']:6.1f} s  "
                        f"first call {p['first_call_s']:6.1f} s  "
                        f"then {p['steady_ms']:.1f} ms/call",
                        flush=True,
                    )
            os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
            with open(args.out, "w") as f:  # After each variant: a cut-short run keeps its rows.
                json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
