"""One GPU session, prepared: benchmark, train CIFAR-10 conditional, evaluate, test, compile times.

On the device machine (after `benchmarks/device/bundle.py` here, carrying .device_bundle):

    python3 benchmarks/device/session.py --out=$OUT --budget=585

`--tiny`: a dry run on a CPU at tiny sizes. README.md beside this file lists the
steps (`STEPS`, each a subprocess under its own time limit, all within
`--budget`) and the files written to `--out`.
"""

import argparse
import dataclasses
import functools
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(REPO, ".device_bundle")


@dataclasses.dataclass
class Step:
    name: str
    limit_s: float
    tiny_limit_s: float


# Limits sized from the first H200 session: a cold compile of cifar10_cond's
# train step took 82-90 s there, and every jaxdiff build pays one.
STEPS = [
    Step("setup", 40, 60),
    Step("benchmark", 150, 300),
    Step("train", 250, 240),
    Step("classifier", 60, 120),
    Step("eval", 70, 240),
    Step("more_benchmarks", 150, 300),
]


class Session:
    """Runs commands under time limits, logging to one file, keeping a summary."""

    def __init__(self, out: str, budget_s: float, tiny: bool):
        self.out, self.tiny = out, tiny
        self.deadline = time.monotonic() + budget_s
        self.summary: list[str] = []
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        os.makedirs(out, exist_ok=True)
        self.log = open(os.path.join(out, "session.log"), "a", buffering=1)  # noqa: SIM115

    def note(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")
        self.summary.append(line)
        with open(os.path.join(self.out, "summary.md"), "w") as f:
            f.write("\n".join(self.summary) + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, cmd: list[str], limit_s: float, log=None, env=None, background=False):
        """Runs `cmd`, its output into the session log (or `log`), killed after `limit_s`.

        Returns (return code or None when stopped at the limit, seconds), or the
        Popen when `background`.
        """
        limit_s = max(1.0, min(limit_s, self.left()))
        self.log.write(f"$ {' '.join(cmd)}   (limit {limit_s:.0f} s)\n")
        target = log or self.log
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env or self.env,
            stdout=target,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if background:
            proc.limit_s, proc.start = limit_s, start
            return proc
        return self.wait(proc, limit_s, start)

    def wait(self, proc, limit_s=None, start=None):
        """Waits for `proc` until its limit: SIGTERM then, SIGKILL 20 s later."""
        limit_s = proc.limit_s if limit_s is None else limit_s
        start = proc.start if start is None else start
        try:
            return proc.wait(timeout=max(0.0, start + limit_s - time.monotonic())), _since(start)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return None, _since(start)


def _since(start: float) -> float:
    return time.monotonic() - start


def _tail(path: str, pattern: str) -> str:
    """The last line of `path` containing `pattern` ("" if none)."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if pattern in line]
    except OSError:
        return ""
    # Without absl's prefix ("I1204 12:15:09.16 140664 loop.py:125] ").
    return lines[-1].split("] ", 1)[-1] if lines else ""


def setup(s: Session, args) -> None:
    wheels = glob.glob(os.path.join(BUNDLE, "wheels", "*.whl"))
    if wheels and not s.tiny:
        site = "/tmp/jaxdiff_site"
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        cmd += ["--no-compile", "--target", site, *wheels]
        code, _ = s.run(cmd, 60)
        s.env["PYTHONPATH"] = os.pathsep.join((site, s.env.get("PYTHONPATH", "")))
        s.note(f"- wheels: {len(wheels)} installed (exit {code})")
    # jaxdiff itself: its configs are a mapped package (jaxdiff.configs), so an
    # install, not PYTHONPATH; offline, its dependencies being there already.
    check = [sys.executable, "-c", "import jaxdiff.configs"]
    if subprocess.run(check, env=s.env, cwd=REPO, capture_output=True).returncode:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        code, _ = s.run([*cmd, "--no-build-isolation", "-e", REPO], 60)
        s.note(f"- jaxdiff installed (exit {code})")
        if code != 0:  # Then a link in this (disposable) copy of the tree does it.
            os.symlink(os.path.join(REPO, "configs"), os.path.join(REPO, "jaxdiff", "configs"))
            s.note("- jaxdiff/configs linked to configs/ instead")
    # The dry run reads the bundle's repacked CIFAR-10 too (its wheels are for the GPU image).
    data_dir = os.path.join(BUNDLE, "tensorflow_datasets")
    if os.path.isdir(data_dir):
        s.env["TFDS_DATA_DIR"] = data_dir
    # Several processes share the GPU (the tests run beside the training).
    s.env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    probe = (
        "import jax, flax, optax, platform; d = jax.devices()[0]; "
        "print(f'- device: {d.device_kind} x{jax.device_count()} ({jax.default_backend()}); "
        "jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
        "python {platform.python_version()}')"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=s.env, capture_output=True, text=True, cwd=REPO
    )
    s.note(out.stdout.strip() or f"- device probe failed: {out.stderr.strip()[-300:]}")
    try:
        import torch

        s.note(f"- torch {torch.__version__}, cuda {torch.cuda.is_available()}")
    except ImportError:
        s.note("- torch: not installed")


def benchmark(s: Session, args, limit_s: float, more: bool = False) -> None:
    """jaxdiff and PyTorch eager at batch 256; with `more`, torch.compile and the MFU sweep."""
    out = os.path.join(s.out, "benchmarks")
    common = [sys.executable, "benchmarks/run.py", "--models=cifar10_cond", "--precision=bf16"]
    common += [f"--out={out}", "--repeats=3" if not s.tiny else "--repeats=1"]
    if s.tiny:
        common += ["--sample_batch=8", "--sample_steps=2", "--train_steps=2"]
        first, compiled, sweep = "--batch=8", "--batch=8", "--batch=16"
    else:
        common += ["--sample_batch=512", "--sample_steps=20", "--train_steps=20"]
        first, compiled, sweep = "--batch=256", "--batch=256", "--batch=512,128"
    if not more:
        code, took = s.run([*common, "--no_merge", "--sides=jaxdiff,torch_eager", first], limit_s)
        s.note(f"- benchmark, jaxdiff and PyTorch eager at {first}: exit {code} in {took:.0f} s")
    else:
        # Merged into the same table (run.py writes after each model and batch).
        code, took = s.run([*common, "--sides=torch_compile", compiled], 0.4 * limit_s)
        s.note(f"- benchmark, torch.compile at {compiled}: exit {code} in {took:.0f} s")
        code, took = s.run([*common, "--sides=jaxdiff", sweep], limit_s - took)
        s.note(f"- benchmark, jaxdiff at {sweep}: exit {code} in {took:.0f} s")
    if os.path.exists(out + ".md"):  # Made again from the .json; the tool returns 8 files.
        os.remove(out + ".md")
    for row in _rows(out + ".json"):
        mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
        s.note(
            f"  - {row['model']} {row['side']} batch {row['batch']}: train "
            f"{row['train_images_per_sec']:,.0f} img/s, MFU {mfu}, sample {row['ms_per_eval']} "
            f"ms/eval, warm-up {row['warmup_s']} s"
        )


def _rows(path: str) -> list[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return []


def fastest_batch(s: Session) -> tuple[int, float]:
    """The swept batch with the most training images/s, and that speed (256 if none)."""
    rows = [r for r in _rows(os.path.join(s.out, "benchmarks.json")) if r["side"] == "jaxdiff"]
    if not rows:
        return (16 if s.tiny else 256), 0.0
    best = max(rows, key=lambda r: r["train_images_per_sec"])
    return best["batch"], best["train_images_per_sec"]


def train(s: Session, args, limit_s: float) -> None:
    batch, speed = fastest_batch(s)
    # Steps that fill the limit after loading the data, compiling and the final
    # checkpoint's class grid (~130 s together), in whole hundreds (log_every).
    steps = int(max(100, speed * (limit_s - 130) / batch) // 100 * 100)
    if s.tiny:
        steps = 8
    overrides = _train_overrides(s, batch, steps)
    args.overrides = overrides
    s.note(f"- train: batch {batch} (swept {speed:,.0f} img/s), {steps} steps planned")
    tests = None
    if not s.tiny:
        env = dict(s.env, XLA_PYTHON_CLIENT_MEM_FRACTION="0.1")
        env.pop("TFDS_DATA_DIR", None)  # The tests bring their own data.
        tests_log = open(os.path.join(s.out, "tests.log"), "w", buffering=1)  # noqa: SIM115
        # Not -n auto (16 workers there): they starved the training of CPU.
        pytest = ["-m", "pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider", "-n", "4"]
        tests = s.run(
            [sys.executable, *pytest],
            # Beside the training, the classifier and the eval; `finish_tests` collects it.
            limit_s + 140,
            log=tests_log,
            env=env,
            background=True,
        )
    # Beside the training, the classifier and the eval, as CPU-bound as the tests.
    compile_limit = sum(x.limit_s for x in STEPS if x.name in ("train", "classifier", "eval"))
    probe = start_compile_probe(s, args, 300 if s.tiny else compile_limit)
    args.background.append(("compile-time probe (beside the training)", probe))
    cmd = [sys.executable, "main.py", "--config=configs/cifar10_cond.py"]
    cmd += [f"--workdir={args.workdir}", *overrides]
    code, took = s.run(cmd, limit_s)
    if os.path.exists(os.path.join(args.workdir, "metrics.jsonl")):
        shutil.copyfile(
            os.path.join(args.workdir, "metrics.jsonl"), os.path.join(s.out, "metrics.jsonl")
        )
    # The class grid drawn at the last checkpoint (the config's sampler and guidance).
    grids = sorted(glob.glob(os.path.join(args.workdir, "samples", "step_*.png")))
    if grids:
        shutil.copyfile(grids[-1], os.path.join(s.out, "grid.png"))
    log = os.path.join(s.out, "session.log")
    s.note(
        f"- train: exit {code} in {took:.0f} s, "
        f"grid {os.path.basename(grids[-1]) if grids else 'none'}"
    )
    for pattern in ("first call", "img/s", "stopped by", "saved checkpoint"):
        line = _tail(log, pattern)
        if line:
            s.note(f"  - {line[-200:]}")
    if tests is not None:
        args.background.append(("GPU tests (pytest -m 'not slow', beside the training)", tests))


def _flags(fields: str) -> list[str]:
    """`--config.<field>=<value>` for each of the space-separated `field=value` of `fields`."""
    return [f"--config.{field}" for field in fields.split()]


def _train_overrides(s: Session, batch: int, steps: int) -> list[str]:
    o = _flags(
        f"training.half_precision=True training.batch_size={batch} training.num_steps={steps} "
        f"training.log_every=100 training.checkpoint_every={steps} "
        f"training.warmup_steps={min(1000, steps // 10)}"
    )
    if s.tiny:
        o += _flags(
            "data.train_split=train[:64] model.channels=(8,8,8,8) model.num_res_blocks=1 "
            "model.embed_dim=16 model.context_dim=16 training.log_every=4 "
            "training.checkpoint_every=8 training.warmup_steps=2 sampling.num_steps=2 "
            "sampling.samples_per_class=1"
        )
    return o


def classifier(s: Session, args, limit_s: float) -> None:
    cmd = [sys.executable, "main.py", "--config=configs/classifier_cifar10.py"]
    cmd += [f"--workdir={args.classifier_workdir}"]
    if s.tiny:
        cmd += _flags(
            "data.train_split=train[:64] classifier.channels=(8,8) classifier.num_res_blocks=1 "
            "classifier.num_steps=4 classifier.batch_size=16 classifier.log_every=2 "
            "classifier.checkpoint_every=4 classifier.warmup_steps=1"
        )
    code, took = s.run(cmd, limit_s)
    s.note(f"- classifier: exit {code} in {took:.0f} s")
    line = _tail(os.path.join(s.out, "session.log"), "accuracy")
    if line:
        s.note(f"  - {line[-200:]}")


def evaluate(s: Session, args, limit_s: float) -> None:
    sampling = [f"--config.sampling.sampler={args.sampler}"]
    sampling += [f"--config.sampling.num_steps={2 if s.tiny else args.sample_steps}"]
    common = [sys.executable, "main.py", "--config=configs/cifar10_cond.py"]
    common += [f"--workdir={args.workdir}", *args.overrides, *sampling]
    num = 20 if s.tiny else 10_000
    cmd = [*common, "--mode=eval", f"--config.eval.num_samples={num}"]
    cmd += [f"--config.eval.classifier_workdir={args.classifier_workdir}"]
    cmd += [f"--config.eval.batch_size={10 if s.tiny else 1000}"]
    code, took = s.run(cmd, limit_s)
    s.note(
        f"- eval ({args.sampler}, {args.sample_steps} steps, {num} samples): "
        f"exit {code} in {took:.0f} s"
    )
    records = sorted(glob.glob(os.path.join(args.workdir, "eval", "[0-9]*.json")))
    if records:
        shutil.copyfile(records[-1], os.path.join(s.out, "eval.json"))
        with open(records[-1]) as f:
            record = json.load(f)
        shown = {k: v for k, v in record.items() if isinstance(v, int | float)}
        s.note(f"  - {json.dumps(shown)}")


def start_compile_probe(s: Session, args, limit_s: float):
    """`benchmarks/compile_time.py` in the background (its compiling is CPU work)."""
    cmd = [sys.executable, "benchmarks/compile_time.py", "--config=cifar10_cond"]
    cmd += [f"--out={os.path.join(s.out, 'compile_time.json')}"]
    if s.tiny:
        cmd += ["--variants=default", "--batch=4", "--sample_batch=4", "--sample_steps=2"]
    else:
        batch, _ = fastest_batch(s)
        # The warm cache is measured (docs/results.md); autotuning, the likely cost of
        # the cold compile, did not get its turn behind it.
        cmd += ["--variants=cache_cold,autotune_0", f"--batch={batch}"]
        cmd += ["--sample_batch=1000", f"--sample_steps={args.sample_steps}"]
        cmd += [f"--sampler={args.sampler}"]
    # Its own log: its lines ("first call ...") must not mix with the training's.
    log = open(os.path.join(args.scratch, "compile_probe.log"), "w", buffering=1)  # noqa: SIM115
    return s.run(cmd, limit_s, log=log, background=True)


def finish_background(s: Session, args) -> None:
    """Collects the tests and the compile probe, each up to its limit, within the budget."""
    for name, proc in args.background:
        limit = min(proc.limit_s, _since(proc.start) + max(1.0, s.left()))
        code, took = s.wait(proc, limit_s=limit)
        s.note(f"- {name}: exit {code} in {took:.0f} s")
        if name.startswith("GPU tests"):
            s.note(f"  - {_tail(os.path.join(s.out, 'tests.log'), ' in ')}")
            continue
        data = _rows(os.path.join(s.out, "compile_time.json"))
        for row in data.get("rows", []) if isinstance(data, dict) else []:
            for program in ("train", "sample"):
                if program in row:
                    p = row[program]
                    s.note(
                        f"  - {row['variant']} {program}: first call {p['first_call_s']:.1f} s "
                        f"(trace {p['trace_s']:.1f}, lower {p['lower_s']:.1f}, "
                        f"compile {p['compile_s']:.1f}), then {p['steady_ms']:.1f} ms/call"
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/jaxdiff_session"))
    parser.add_argument("--budget", type=float, default=585, help="seconds for all steps")
    parser.add_argument("--tiny", action="store_true", help="a CPU dry run at tiny sizes")
    parser.add_argument("--scratch", default="/tmp/jaxdiff_runs", help="runs and extra logs")
    parser.add_argument("--sampler", default="edm", help="the eval's sampler (the default's)")
    parser.add_argument("--sample_steps", type=int, default=18)
    args = parser.parse_args()
    shutil.rmtree(args.scratch, ignore_errors=True)
    os.makedirs(args.scratch)
    args.workdir = os.path.join(args.scratch, "cifar10_cond")
    args.classifier_workdir = os.path.join(args.scratch, "classifier_cifar10")
    s = Session(args.out, args.budget, args.tiny)
    s.note(
        f"# jaxdiff device session ({time.strftime('%Y-%m-%d %H:%M:%S')}, "
        f"budget {args.budget:.0f} s)"
    )
    steps = {
        "benchmark": benchmark,
        "train": train,
        "classifier": classifier,
        "eval": evaluate,
        "more_benchmarks": functools.partial(benchmark, more=True),
    }
    args.overrides, args.background = [], []
    for step in STEPS:
        limit = step.tiny_limit_s if args.tiny else step.limit_s
        if step.name == "setup":
            setup(s, args)
            continue
        if s.left() < 0.5 * limit:
            s.note(f"- {step.name}: skipped, {s.left():.0f} s left of the budget")
            continue
        steps[step.name](s, args, limit)
    finish_background(s, args)
    s.note(f"# done, {s.left():.0f} s of the budget left")


if __name__ == "__main__":
    main()
