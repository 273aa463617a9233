"""jaxdiff against the PyTorch original, side by side: training, sampling, memory, MFU.

    pip install -e ".[benchmarks]"      # PyTorch (CPU machines: torch==2.13.0)
    python benchmarks/run.py                                   # GPU defaults: batch 1024
    python benchmarks/run.py --batch=64 --sample_batch=64 --sample_steps=20 \\
        --train_steps=8 --repeats=3                            # a few minutes on 2 CPU cores
    python benchmarks/run.py --models=cifar10_cond --sides=jaxdiff --precision=bf16 \\
        --batch=128,256,512 --sample_batch=512                 # an MFU sweep: a table per batch

Rows (`--models` picks): the original project's MNIST nets
(`configs/mnist_original.py`, uncond and cond) and jaxdiff's MNIST,
Fashion-MNIST and CIFAR-10 configs, each on three sides (`--sides`): jaxdiff,
and its network's PyTorch twin (benchmarks/torch_reference.py) eager and
`torch.compile`d. Before timing, the twin is checked to compute jaxdiff's
network and score (`check_twin`). Every
side is built and warmed up first (the warm-up time, compilation included, is
reported), then the sides of a model are timed in turns, `--repeats` times;
figures are medians. Train images/s use the same batch and precision on every
side, with batches drawn on the device from a device-resident copy of the
first 10,000 training images; sampling is `--sample_steps` Euler-Maruyama steps
on `--sample_batch` samples (one network evaluation per step). `--batch` takes
a comma-separated list: each model is then built and timed once per batch
size, each its own rows (the twin is checked once per model).

Writes docs/benchmarks.json and docs/benchmarks.md (`--out` prefix), after
every model and batch. The JSON file keeps the rows of every machine: a run's rows
replace those of the same (device, model, side, precision, batch) (`row_key`)
and every other row stays (`merge_rows`), so a GPU run adds its rows beside
the CPU ones. Each row records its run: the command, jax and torch versions and
the date (`run_record`). The markdown is made from all the rows (`markdown`):
a section per device, with its runs, and a table per precision and batch,
whose "vs jaxdiff" column compares rows of that table only. `--no_merge`
writes this run's rows alone (a scratch run to another `--out`).

FLOPs per train step are those of the single-step program's convolutions and
matrix products, counted in its jaxpr (`jaxpr_flops`; the same on every
backend). The same count is used for the PyTorch rows (same network, same
step). MFU = FLOPs per step x steps/s / the device's peak (`PEAK_FLOPS`; none
known for CPUs).

The process keeps freed host memory for reuse (`jaxdiff.core.host_memory`), as
main.py does; every side runs in it alike.
"""

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # common, torch_reference

import jaxdiff.configs as configs
from common import labelled_sampler, time_in_turns, timed_setup

from jaxdiff.core.compiler import jit, memory_summary
from jaxdiff.core.host_memory import keep_freed_memory
from jaxdiff.data import batches, tfds_reader
from jaxdiff.data.datasets import BUILTIN_SHAPES, dataset_info
from jaxdiff.diffusion.preconditioning import make_score_fn
from jaxdiff.models import count_params
from jaxdiff.training.score import make_train_step

# Dense peak FLOP/s by device kind and precision (fp32 = TF32 tensor cores, which
# XLA and PyTorch's cuDNN convolutions use for float32 by default).
PEAK_FLOPS = {
    "H100": {"bf16": 989.4e12, "fp32": 494.7e12},
    "H200": {"bf16": 989.4e12, "fp32": 494.7e12},
    "A100": {"bf16": 312e12, "fp32": 156e12},
}

# Row names and the configs they time (names of `configs.get_config`).
MODELS = {
    "seed_uncond": "mnist_original",
    "seed_cond": "mnist_original:cond",
    "mnist": "mnist",
    "mnist_cond": "mnist_cond",
    "fashion_mnist": "fashion_mnist",
    "fashion_mnist_cond": "fashion_mnist_cond",
    "cifar10": "cifar10",
    "cifar10_cond": "cifar10_cond",
}


# Images every benchmark trains on: the first 10,000 of the train split.
BENCHMARK_SPLIT = "train[:10000]"


def benchmark_images(dataset: str, npz_dir: str = ""):
    """The benchmark's images and labels: `<npz_dir>/<dataset>.npz` if there, else TFDS.

    The .npz (arrays `images`, `labels`; `--save_npz` writes it) lets a machine
    without the full dataset run the benchmark.
    """
    if npz_dir and os.path.exists(os.path.join(npz_dir, f"{dataset}.npz")):
        with np.load(os.path.join(npz_dir, f"{dataset}.npz")) as saved:
            return saved["images"], saved["labels"]
    return tfds_reader.load_split(dataset, BENCHMARK_SPLIT)


def peak_flops(precision: str) -> float | None:
    kind = jax.devices()[0].device_kind
    for name, peaks in PEAK_FLOPS.items():
        if name in kind:
            return peaks[precision]
    return None


class JaxSide:
    """jaxdiff's own train call and sampler for a config."""

    name = "jaxdiff"

    def __init__(self, config, args, images, labels):
        setup = timed_setup(config, args, "euler_maruyama", args.train_steps)
        self.experiment = experiment = setup.experiment
        c = experiment.config
        self.calls = args.train_steps // c.training.steps_per_call
        self.key = key = jax.random.key(0)
        self.state = setup.init_state(key)
        self.params = count_params(self.state.params)
        self.dataset = batches.to_device(images, labels, experiment.mesh)
        self.flops_per_step = train_step_flops(experiment, setup.tx, self.state, key, self.dataset)

        # As jaxdiff compiles its sampler.
        self.sample_fn = jit(labelled_sampler(experiment, c.sampling, args.sample_batch))
        start = time.perf_counter()
        # Compiled once, ahead of time, so that its memory analysis costs no second compile;
        # a state of another sharding would be refused, not silently compiled for again.
        self.train_call = setup.train_call.lower(self.state, key, self.dataset).compile()
        self.train()
        self.sample()
        self.warmup_s = time.perf_counter() - start
        # Arguments + outputs + temporaries, donated buffers once (None: not reported).
        total = memory_summary(self.train_call, "train call").total_bytes
        self.peak_mem_mb = None if total is None else total / 2**20

    def train(self):
        for _ in range(self.calls):
            self.state, metrics = self.train_call(self.state, self.key, self.dataset)
        jax.block_until_ready(metrics["loss"])

    def sample(self):
        jax.block_until_ready(self.sample_fn(self.state.ema_params, self.key))


def train_step_flops(experiment, tx, state, key, dataset) -> float | None:
    """FLOPs of one train step of `experiment`, from its lowered program (see `_flops`)."""
    one_step = make_train_step(
        experiment.model, experiment.sde, tx, experiment.config, experiment.mesh
    )
    return _flops(jax.jit(one_step), state, key, dataset)


def _flops(jitted, *args) -> float | None:
    """FLOPs of one call: its convolutions and matrix products, counted in its jaxpr.

    Counted from the program as written, so the same on every backend and jax
    version (XLA's cost analysis of a CPU lowering, used before, is empty in
    jax 0.11, and a compiled GPU program's leaves out cuDNN's convolutions).
    Elementwise work is left out, as MFU conventionally counts it.
    """
    try:
        return float(jaxpr_flops(jitted.trace(*args).jaxpr.jaxpr))
    except Exception as e:  # Counting is best effort: report n/a, keep timing.
        print(f"no FLOP count: {type(e).__name__}: {e}", flush=True)
        return None


def jaxpr_flops(jaxpr, platform: str | None = None) -> int:
    """2 x multiply-adds of every dot_general and conv_general_dilated in `jaxpr`.

    Sub-programs are counted where they run: a scan's body `length` times, the
    branch of a `lax.platform_dependent` that `platform` (default: this
    backend's, e.g. "cuda") runs, another cond's costliest branch, while loops
    once (their trip count is not static).
    """
    if platform is None:
        platform = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            contracted = int(np.prod([lhs_shape[d] for d in lhs_contract]))
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * contracted
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        subs = [v for v in eqn.params.values() if hasattr(v, "eqns") or hasattr(v, "jaxpr")]
        subs += [
            b
            for v in eqn.params.values()
            if isinstance(v, tuple)
            for b in v
            if hasattr(b, "eqns") or hasattr(b, "jaxpr")
        ]
        counts = [jaxpr_flops(getattr(sub, "jaxpr", sub), platform) for sub in subs]
        if not counts:
            continue
        if name == "scan":
            total += eqn.params["length"] * sum(counts)
        elif name == "cond" and eqn.params.get("branches_platforms"):
            # lax.platform_dependent: the branch this platform runs (None: the default).
            chosen = [
                i for i, p in enumerate(eqn.params["branches_platforms"]) if p and platform in p
            ]
            chosen = chosen or [eqn.params["branches_platforms"].index(None)]
            total += counts[chosen[0]]
        elif name == "cond":
            total += max(counts)
        else:
            total += sum(counts)
    return total


def _conv_flops(eqn) -> int:
    """2 x the multiply-adds of a convolution that meet an input element.

    Products with the zeros of padding and of input dilation (the stride of a
    transposed convolution, or of a strided one's input gradient) are not
    work: per spatial dimension, the (output position, kernel tap) pairs that
    land on an input element are counted.
    """
    p = eqn.params
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    lhs, rhs, out = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
    pairs = 1
    for i, (lhs_dim, rhs_dim, out_dim) in enumerate(
        zip(lhs_spec[2:], rhs_spec[2:], out_spec[2:], strict=True)
    ):
        size, taps, outputs = lhs[lhs_dim], rhs[rhs_dim], out[out_dim]
        stride, (pad_lo, _) = p["window_strides"][i], p["padding"][i]
        lhs_dilation, rhs_dilation = p["lhs_dilation"][i], p["rhs_dilation"][i]
        positions = (
            np.arange(outputs)[:, None] * stride + np.arange(taps)[None, :] * rhs_dilation - pad_lo
        )
        on_input = (positions >= 0) & (positions <= (size - 1) * lhs_dilation)
        pairs *= int(np.sum(on_input & (positions % lhs_dilation == 0)))
    batch, features = out[out_spec[0]], out[out_spec[1]]
    return 2 * batch * features * rhs[rhs_spec[1]] * pairs


def torch_twin(config, image_shape: tuple[int, int, int], num_classes: int):
    """The PyTorch twin (benchmarks/torch_reference.py) of a config's score network.

    Raises:
      ValueError: for a config the twins do not cover (another network or SDE).
    """
    import torch_reference as ref

    m = config.model
    if config.sde.name != "ve" or config.sde.sigma != ref.SIGMA:
        raise ValueError(f"the PyTorch twins use the VE SDE with sigma = {ref.SIGMA}")
    if m.preconditioning not in ref.PRECONDITIONINGS:
        raise ValueError(f"no PyTorch twin of model.preconditioning={m.preconditioning!r}")
    common = dict(
        embed_dim=m.embed_dim,
        fourier_scale=m.fourier_scale,
        preconditioning=m.preconditioning,
        sigma_data=m.sigma_data,
        heads=m.num_heads,
    )
    if m.conditional:
        common.update(
            num_classes=num_classes,
            context_tokens=m.context_tokens,
            context_dim=m.context_dim,
            ff_mult=m.ff_mult,
        )
    height, width, image_channels = image_shape
    if m.name == "small_unet" and image_shape == (28, 28, 1):
        return ref.SmallUNet(
            channels=tuple(m.channels), attention_sides=tuple(m.attention_resolutions), **common
        )
    if m.name == "unet" and height == width:
        return ref.UNet(
            image_channels,
            height,
            channels=tuple(m.channels),
            num_res_blocks=m.num_res_blocks,
            attention_sides=tuple(m.attention_resolutions),
            dropout=m.dropout,
            **common,
        )
    raise ValueError(f"no PyTorch twin of model.name={m.name!r} on {height}x{width} images")


def check_twin(jax_side: JaxSide, device, batch: int = 4) -> float:
    """Checks that the PyTorch twin computes jaxdiff's network and score; returns the error.

    Both get the same parameters: jaxdiff's initial ones plus N(0, 0.05^2) noise
    (the zero-initialised output layers would otherwise hide everything behind
    them), and the same float32 inputs, and compute in float32 (whatever precision
    is timed). The network outputs and the scores are compared separately
    (the score's skip term -x / (sigma^2 + sigma_data^2)
    can outweigh the network's part); the largest difference of each, relative
    to its largest value, must be under 1e-4 on a CPU and 1e-2 on a GPU (whose
    TF32 convolutions round to about 1e-3). The timed sides keep their own
    parameters.

    Raises:
      SystemExit: if they differ.
    """
    import torch
    import torch_reference as ref

    experiment = jax_side.experiment
    leaves, treedef = jax.tree.flatten(jax.device_get(jax_side.state.params))
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(
        treedef,
        [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)],
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *experiment.data_shape)).astype(np.float32)
    t = np.linspace(0.3, 0.9, batch, dtype=np.float32)
    labels = None
    if experiment.num_classes:
        labels = np.arange(batch, dtype=np.int32) % (experiment.num_classes + 1)  # with null
    # In float32 whatever precision is timed: the twin computes in float32, and a bf16
    # network differs from it by bf16's rounding (about 2% on the CIFAR-10 U-Net).
    model = experiment.model.clone(dtype=jnp.float32)
    score_fn = make_score_fn(model, params, experiment.sde, experiment.config.model, labels=labels)
    expected = {
        "network": model.apply({"params": params}, x, t, labels),
        "score": jax.jit(score_fn)(x, t),
    }

    twin = torch_twin(experiment.config, experiment.data_shape, experiment.num_classes)
    twin = twin.to(device)
    ref.load_jaxdiff_params(twin, jax.tree.map(np.asarray, params))
    twin.eval()
    inputs = (
        torch.tensor(x, device=device).permute(0, 3, 1, 2),
        torch.tensor(t, device=device),
        None if labels is None else torch.tensor(labels, device=device).long(),
    )
    with torch.no_grad():
        got = {"network": twin.network(*inputs), "score": twin(*inputs)}
    tolerance = 1e-4 if device.type == "cpu" else 1e-2
    errors = {}
    for name, value in got.items():
        value, want = value.permute(0, 2, 3, 1).cpu().numpy(), np.asarray(expected[name])
        errors[name] = float(np.abs(value - want).max() / np.abs(want).max())
        if not errors[name] < tolerance:
            sys.exit(
                f"error: the PyTorch twin's {name} output differs from jaxdiff's by "
                f"{errors[name]:.2%} of its size"
            )
    return max(errors.values())


class TorchSide:
    """The PyTorch twin (benchmarks/torch_reference.py) of a config, eager or torch.compile'd."""

    def __init__(self, config, compiled, args, images, labels):
        import torch
        import torch_reference as ref

        self.torch = torch
        self.name = "torch_compile" if compiled else "torch_eager"
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(0)
        info = dataset_info(config.data.dataset)
        image_shape, num_classes = info.image_shape, info.num_classes
        self.model = model = torch_twin(config, image_shape, num_classes).to(self.device)
        self.params = ref.count_params(model)
        self.dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        # Static shapes, as XLA compiles them (automatic dynamic shapes broke inductor on
        # the CIFAR-10 twin).
        net = torch.compile(model, dynamic=False) if compiled else model
        # Every twin of one class shares `forward`'s code object, so the compilations of
        # all models in a run (each in training and no-grad mode) count against one
        # recompile limit, 8 by default; past it dynamo quietly runs the twin eager.
        torch._dynamo.config.recompile_limit = 64
        net.num_classes = model.num_classes
        x = torch.tensor(images, device=self.device).permute(0, 3, 1, 2).float() / 255.0
        if config.data.centered:
            x = 2 * x - 1
        y = torch.tensor(labels, device=self.device).long()
        self.trainer = ref.Trainer(
            net,
            x,
            y,
            args.batch,
            dtype=self.dtype,
            cond_drop=config.training.cond_drop_prob,
            random_flip=config.data.random_flip,
        )
        self.steps = args.train_steps
        sample_labels = None
        if model.num_classes:
            sample_labels = torch.arange(args.sample_batch, device=self.device) % num_classes
        chw = (image_shape[2], image_shape[0], image_shape[1])
        self.sample_fn = lambda: ref.euler_maruyama(
            net,
            args.sample_batch,
            args.sample_steps,
            self.device,
            sample_labels,
            self.dtype,
            shape=chw,
        )
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        self.train()
        self.sample()
        self.warmup_s = time.perf_counter() - start
        self.peak_mem_mb = (
            torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else None
        )

    def _sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def train(self):
        self.model.train()  # Dropout on, as in jaxdiff's train step.
        for _ in range(self.steps):
            self.trainer.step()
        self._sync()

    def sample(self):
        self.model.eval()
        self.sample_fn()
        self._sync()


def main() -> None:
    keep_freed_memory()  # As main.py does, for every side in this process; before JAX starts.
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    on_cpu = jax.default_backend() == "cpu"
    parser.add_argument("--models", default="seed_uncond,seed_cond,cifar10_cond")
    parser.add_argument("--sides", default="jaxdiff,torch_eager,torch_compile")
    parser.add_argument(
        "--batch",
        type=batch_list,
        default="64" if on_cpu else "1024",
        help="train batch size, or a comma-separated list to time each (e.g. 128,256,512)",
    )
    parser.add_argument("--sample_batch", type=int, default=64 if on_cpu else 1024)
    parser.add_argument("--sample_steps", type=int, default=20 if on_cpu else 500)
    parser.add_argument("--train_steps", type=int, default=8 if on_cpu else 40)
    parser.add_argument("--steps_per_call", type=int, default=0, help="0: jaxdiff's default")
    parser.add_argument("--repeats", type=int, default=3 if on_cpu else 5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--out", default="docs/benchmarks")
    parser.add_argument(
        "--no_merge",
        action="store_true",
        help="write only this run's rows to <out>.json, not merged into the rows there",
    )
    parser.add_argument(
        "--data_npz_dir", default="", help="read <dir>/<dataset>.npz instead of TFDS"
    )
    parser.add_argument(
        "--save_npz", default="", help="write the benchmark images to <dir>/*.npz and exit"
    )
    args = parser.parse_args()
    if args.save_npz:
        os.makedirs(args.save_npz, exist_ok=True)
        for dataset in BUILTIN_SHAPES:
            images, labels = tfds_reader.load_split(dataset, BENCHMARK_SPLIT)
            np.savez_compressed(
                os.path.join(args.save_npz, f"{dataset}.npz"), images=images, labels=labels
            )
        print(f"wrote {', '.join(BUILTIN_SHAPES)} to {args.save_npz}/<dataset>.npz")
        return
    models, sides = args.models.split(","), args.sides.split(",")
    for name in models:
        if name not in MODELS:
            sys.exit(f"error: unknown model {name!r}; choose from {sorted(MODELS)}")
    for side in sides:
        if side not in ("jaxdiff", "torch_eager", "torch_compile"):
            sys.exit(f"error: unknown side {side!r}; choose jaxdiff, torch_eager, torch_compile")
    datasets = {}  # name -> (images, labels), read once

    rows, failures = [], []
    device_name = jax.devices()[0].device_kind
    if on_cpu:
        device_name = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    json_path = args.out + ".json"
    if not args.no_merge:
        load_rows(json_path)  # A file that cannot be merged into fails now, not after the run.
    record = run_record()
    for model_name in models:
        dataset = configs.get_config(MODELS[model_name]).data.dataset
        if dataset not in datasets:
            datasets[dataset] = benchmark_images(dataset, args.data_npz_dir)
        twin_checked = False
        for batch in args.batch:
            batch_args = argparse.Namespace(**{**vars(args), "batch": batch})
            new_rows, new_failures, checked = time_model(
                model_name, sides, batch_args, *datasets[dataset], device_name, twin_checked
            )
            twin_checked = twin_checked or checked
            rows += [{**row, **record} for row in new_rows]
            failures += new_failures
            # After every batch, so a run cut short keeps the rows it finished.
            write_tables(args.out, rows, {device_name: failures}, merge=not args.no_merge)
    print(f"wrote {json_path} and {args.out}.md")


def time_model(model_name, sides, args, images, labels, device_name, twin_checked):
    """Builds and times a model's sides at `args.batch`: (rows, failures, twin checked).

    A function of its own, so that one batch's sides are freed before the next is built.
    """
    built, failures = [], []
    for side in sides:
        print(f"building {model_name} / {side} at batch {args.batch} ...", flush=True)
        try:
            config = configs.get_config(MODELS[model_name])  # A side sets fields of its own.
            if side == "jaxdiff":
                built.append(JaxSide(config, args, images, labels))
            else:
                built.append(TorchSide(config, side == "torch_compile", args, images, labels))
        except Exception as e:  # One side failing (e.g. a compiler bug) keeps the others.
            message = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            print(f"{model_name} / {side} failed: {type(e).__name__}: {message}", flush=True)
            failures.append(
                f"{model_name} / {side}, batch {args.batch}, {args.precision}: "
                f"{type(e).__name__}: {message}"
            )
    jax_side = next((b for b in built if b.name == "jaxdiff"), None)
    checked = False
    if jax_side is not None:
        for other in built:
            if other.params != jax_side.params:
                sys.exit(
                    f"error: {model_name}: {other.name} has {other.params:,} parameters, "
                    f"jaxdiff {jax_side.params:,}: not the same network"
                )
        torch_sides = [b for b in built if isinstance(b, TorchSide)]
        if torch_sides and not twin_checked:
            error = check_twin(jax_side, torch_sides[0].device)
            print(f"{model_name}: the PyTorch twin's score is jaxdiff's to {error:.1e}")
            checked = True
    calls = {}
    for b in built:
        calls[b.name, "train"], calls[b.name, "sample"] = b.train, b.sample
    seconds = time_in_turns(calls, args.repeats)
    flops = jax_side.flops_per_step if jax_side else None
    peak = peak_flops(args.precision)
    rows = []
    for b in built:
        train_s = statistics.median(seconds[b.name, "train"])
        sample_s = statistics.median(seconds[b.name, "sample"])
        steps_per_s = args.train_steps / train_s
        rows.append(
            {
                "model": model_name,
                "side": b.name,
                "device": device_name,
                "batch": args.batch,
                "precision": args.precision,
                "params": b.params,
                "train_images_per_sec": round(args.batch * steps_per_s, 1),
                "sample_per_sec": round(args.sample_batch / sample_s, 2),
                "sample_steps": args.sample_steps,
                "sample_batch": args.sample_batch,
                "ms_per_eval": round(1000 * sample_s / args.sample_steps, 2),
                "peak_mem_mb": None if b.peak_mem_mb is None else round(b.peak_mem_mb, 1),
                "warmup_s": round(b.warmup_s, 1),
                "gflops_per_step": None if flops is None else round(flops / 1e9, 2),
                "mfu": None if (peak is None or flops is None) else flops * steps_per_s / peak,
            }
        )
        print(_line(rows[-1]), flush=True)
    return rows, failures, checked


def _line(row) -> str:
    return (
        f"{row['model']:13s} {row['side']:14s} batch {row['batch']:5d} "
        f"train {row['train_images_per_sec']:9.1f} img/s  "
        f"sample {row['sample_per_sec']:8.2f}/s  {row['ms_per_eval']:8.2f} ms/eval  "
        f"warm-up {row['warmup_s']:6.1f} s  mem {row['peak_mem_mb']} MB  mfu {row['mfu']}"
    )


def batch_list(text: str) -> list[int]:
    """`--batch`'s value: one batch size or a comma-separated list of them."""
    try:
        batches = [int(b) for b in text.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"not a batch size or comma-separated list: {text!r}")
    return list(dict.fromkeys(batches))  # A batch given twice is timed once.


# The run each row records (`run_record`); rows written before these existed lack them.
RECORD_KEYS = ("command", "jax", "torch", "date")


def run_record() -> dict[str, str]:
    """How this run's rows are made: its command line, jax and torch versions, UTC date."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    return {
        "command": shlex.join(["python", "benchmarks/run.py", *sys.argv[1:]]),
        "jax": jax.__version__,
        "torch": torch_version,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def row_key(row: dict) -> tuple:
    """What a newer row replaces an older one by: (device, model, side, precision, batch)."""
    return tuple(row.get(k) for k in ("device", "model", "side", "precision", "batch"))


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """`old` with each row of `new` in place of the one of its `row_key`, or appended.

    Other rows of `old` (other devices, batches, precisions, models) are kept,
    in their order; rows of new keys follow, in `new`'s order.
    """
    merged = list(old)
    where = {}
    for i, row in enumerate(merged):
        where.setdefault(row_key(row), i)
    for row in new:
        key = row_key(row)
        if key in where:
            merged[where[key]] = row
        else:
            where[key] = len(merged)
            merged.append(row)
    return merged


def load_rows(path: str) -> list[dict]:
    """The rows of a benchmarks JSON file; none if there is no file.

    Raises:
      SystemExit: for a file that is not a JSON list of rows (rather than overwrite it).
    """
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            rows = json.load(f)
    except ValueError as e:
        sys.exit(f"error: {path} is not JSON ({e}); fix it, or write elsewhere with --out")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        sys.exit(f"error: {path} is not a list of rows; fix it, or write elsewhere with --out")
    return rows


def write_tables(
    out: str, rows: list[dict], failures_by_device: dict[str, list[str]], merge: bool = True
) -> list[dict]:
    """Writes `<out>.json` (`rows` merged into its rows, or alone) and `<out>.md` from it.

    Returns the rows written. Each file is written beside its place and renamed
    there, so a run cut short mid-write leaves the previous file whole.
    """
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    if merge:
        rows = merge_rows(load_rows(out + ".json"), rows)
    for path, text in (
        (out + ".json", json.dumps(rows, indent=1) + "\n"),
        (out + ".md", markdown(rows, failures_by_device)),
    ):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return rows


def _value(row: dict, key: str, spec: str = "") -> str:
    """`row[key]` formatted by `spec`; n/a if missing or None."""
    value = row.get(key)
    return "n/a" if value is None else format(value, spec)


def _groups(rows: list[dict], key) -> dict:
    """`rows` grouped by `key(row)`, groups in order of first appearance."""
    groups = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def _ratio(ref: dict | None, row: dict) -> str:
    """The "vs jaxdiff" cell: jaxdiff's train and sample speeds over `row`'s."""
    if ref is None or row.get("side") == "jaxdiff":
        return ""

    def over(key):
        a, b = ref.get(key), row.get(key)
        return "n/a" if a is None or not b else f"{a / b:.2f}x"

    return f"jaxdiff {over('train_images_per_sec')}, {over('sample_per_sec')}"


def _run_line(record: tuple) -> str:
    command, jax_version, torch_version, date = ("n/a" if v is None else v for v in record)
    command = command if command == "n/a" else f"`{command}`"
    date = "date n/a" if date == "n/a" else date
    return f"{command}; jax {jax_version}, torch {torch_version}; {date}."


def markdown(rows: list[dict], failures_by_device: dict[str, list[str]] | None = None) -> str:
    """docs/benchmarks.md from all the rows: a section per device, a table per precision and batch.

    A device's section names the runs its rows come from (`RECORD_KEYS`; n/a
    for rows written before they were recorded) and lists `failures_by_device`'s
    failures for it. The "vs jaxdiff" column compares a row with the jaxdiff row
    of its model in its own table only: same device, precision and batch.
    """
    failures_by_device = failures_by_device or {}
    lines = [
        "# Benchmarks: jaxdiff vs the PyTorch original",
        "",
        "Written by `benchmarks/run.py` (see there for what each column measures), which "
        "merges each run's rows into benchmarks.json by device, model, side, precision and "
        'batch. A section per machine, a table per batch and precision; "vs jaxdiff" '
        "compares rows of one table only. Train: median of the command's `--repeats` runs of "
        "`--train_steps` steps; sampling likewise. Sides timed in turns.",
        "",
    ]
    by_device = _groups(rows, lambda r: r.get("device"))
    for device in failures_by_device:
        if failures_by_device[device]:
            by_device.setdefault(device, [])
    for device, device_rows in by_device.items():
        lines += [f"## {'n/a' if device is None else device}", ""]
        runs = list(dict.fromkeys(tuple(r.get(k) for k in RECORD_KEYS) for r in device_rows))
        if len(runs) == 1:
            lines += [f"Command: {_run_line(runs[0])}", ""]
        elif runs:
            lines += ["Runs:", ""]
            lines += [f"{i}. {_run_line(run)}" for i, run in enumerate(runs, 1)]
            lines.append("")
        groups = _groups(device_rows, lambda r: (r.get("precision"), r.get("batch")))
        for (precision, batch), group in groups.items():
            sampling = dict.fromkeys(
                f"{_value(r, 'sample_steps')} Euler-Maruyama steps on "
                f"{_value(r, 'sample_batch')} samples"
                for r in group
            )
            note = f"Sampling: {'; '.join(sampling)}."
            if len(runs) > 1:
                used = dict.fromkeys(
                    str(runs.index(tuple(r.get(k) for k in RECORD_KEYS)) + 1) for r in group
                )
                note += f" Rows from run{'s' if len(used) > 1 else ''} {', '.join(used)}."
            lines += [
                f"### Batch {'n/a' if batch is None else batch}, "
                f"{'n/a' if precision is None else precision}",
                "",
                note,
                "",
                "| model | side | params | train img/s | samples/s | ms/eval | peak MB | warm-up s "
                "| GFLOP/step | MFU | vs jaxdiff (train, sample) |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            base = {}
            for r in group:
                if r.get("side") == "jaxdiff":
                    base.setdefault(r.get("model"), r)
            for r in group:
                mfu = "n/a" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
                lines.append(
                    f"| {_value(r, 'model')} | {_value(r, 'side')} | {_value(r, 'params', ',')} "
                    f"| {_value(r, 'train_images_per_sec', ',.1f')} "
                    f"| {_value(r, 'sample_per_sec', ',.2f')} | {_value(r, 'ms_per_eval', '.2f')} "
                    f"| {_value(r, 'peak_mem_mb', ',.0f')} | {_value(r, 'warmup_s', '.1f')} "
                    f"| {_value(r, 'gflops_per_step')} | {mfu} "
                    f"| {_ratio(base.get(r.get('model')), r)} |"
                )
            lines.append("")
        failures = failures_by_device.get(device)
        if failures:
            lines += ["Sides that failed to build:", "", *(f"- {x}" for x in failures), ""]
    lines += [
        "Peak MB: jaxdiff, the compiled train call's arguments + outputs + temporaries "
        "(XLA's memory analysis); PyTorch, `torch.cuda.max_memory_allocated` (GPU only).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
