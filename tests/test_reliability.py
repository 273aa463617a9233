"""Faults a training run must survive: signals, hard kills, NaNs, a busy or changed workdir,
corrupted checkpoints; and the determinism that makes "resumed == uninterrupted" checkable.

Runs that must be real processes (signals, kills, exit codes) are subprocesses
of main.py on a tiny MNIST config; they share a persistent compilation cache
so that only the first one compiles.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxdiff.core import preemption
from jaxdiff.core.errors import UserError
from jaxdiff.data import tfds_reader
from jaxdiff.training.score import train_and_evaluate
from jaxdiff.training.workdir import WorkdirLock

from .conftest import ROOT, cli_flags, tiny_overrides, xla_flags
from .test_cli import assert_one_line_error, run_main, snapshot

# End-to-end: main.py processes and real runs (not in the fast tier).
pytestmark = pytest.mark.slow

NUM_STEPS = 200
CHECKPOINT_EVERY = 8  # Saves every other call: a random kill often lands in one.
TINY_ARGS = [
    "--config=configs/mnist.py",
    "--config.data.train_split=train[:256]",
    "--config.model.channels=(8,16,16,16)",
    "--config.model.embed_dim=16",
    "--config.training.batch_size=16",
    f"--config.training.num_steps={NUM_STEPS}",
    "--config.training.log_every=40",
    f"--config.training.checkpoint_every={CHECKPOINT_EVERY}",
    "--config.training.sample_at_checkpoints=False",
]


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """Environment for main.py subprocesses: one persistent XLA cache for all of them."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("xla_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


def start_main(workdir, env, *extra):
    return subprocess.Popen(
        [sys.executable, "main.py", f"--workdir={workdir}", *TINY_ARGS, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **env),
    )


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def checkpoint_steps(workdir):
    path = workdir / "checkpoints"
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.exists() else []


def checkpoint_arrays(workdir, step):
    """Every array of a checkpoint, by path, read back with plain orbax onto one device."""
    path = workdir / "checkpoints" / str(step) / "default"
    checkpointer = ocp.StandardCheckpointer()
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    metadata = checkpointer.metadata(path)
    # Newer orbax wraps the tree in a StepMetadata (its item_metadata).
    metadata = getattr(metadata, "item_metadata", metadata)
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one_device), metadata
    )
    tree = checkpointer.restore(path, target)
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def assert_same_checkpoint(workdir_a, workdir_b, step):
    a, b = checkpoint_arrays(workdir_a, step), checkpoint_arrays(workdir_b, step)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def wait_for(condition, process, timeout=120):
    """Polls until `condition()`; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, finish(process).stderr[-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def logged(workdir):
    """Whether the run has written its first metrics record (training is under way)."""
    path = workdir / "metrics.jsonl"
    return path.exists() and path.stat().st_size > 0


def metrics_steps(workdir):
    return [
        json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_env):
    """An uninterrupted run of the tiny config."""
    workdir = tmp_path_factory.mktemp("reference")
    result = finish(start_main(workdir, cache_env))
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint_steps(workdir)[-1] == NUM_STEPS
    return workdir


def test_same_config_and_seed_give_bit_identical_checkpoints(reference, tmp_path, cache_env):
    result = finish(start_main(tmp_path, cache_env))
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint_steps(tmp_path) == checkpoint_steps(reference)
    for step in checkpoint_steps(reference):
        assert_same_checkpoint(reference, tmp_path, step)


def test_sigterm_saves_exits_zero_and_resumes_to_the_same_parameters(
    reference, tmp_path, cache_env
):
    process = start_main(tmp_path, cache_env)
    wait_for(lambda: logged(tmp_path), process)
    process.send_signal(signal.SIGTERM)
    stopped = finish(process)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "stopped by SIGTERM" in stopped.stderr
    assert "run the same command again to resume" in stopped.stderr
    step = checkpoint_steps(tmp_path)[-1]
    assert 0 < step < NUM_STEPS
    assert metrics_steps(tmp_path)[-1] == step  # Metrics were flushed up to the stop.

    resumed = finish(start_main(tmp_path, cache_env))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from step {step}" in resumed.stderr
    assert_same_checkpoint(reference, tmp_path, NUM_STEPS)
    steps = metrics_steps(tmp_path)
    assert steps == sorted(set(steps))


def test_first_signal_is_recorded_and_a_second_one_acts_at_once():
    # A stale handler from a library (e.g. asyncio's, after an orbax restore in
    # an earlier test) must not change what a second Ctrl-C does.
    stale = lambda signum, frame: None  # noqa: E731
    signal.signal(signal.SIGINT, stale)
    try:
        with preemption.stop_signals_caught():
            assert preemption.stop_requested() is None
            signal.raise_signal(signal.SIGINT)  # Ctrl-C: no KeyboardInterrupt yet...
            assert preemption.stop_requested() == "SIGINT"
            with pytest.raises(KeyboardInterrupt):  # ...but Ctrl-C twice is Python's own.
                signal.raise_signal(signal.SIGINT)
        assert preemption.stop_requested() is None
        # The handlers that were there before are back.
        assert signal.getsignal(signal.SIGINT) is stale
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_random_hard_kills_never_lose_a_resumable_state(reference, tmp_path, cache_env):
    rng = random.Random(0)
    directory = tmp_path / "checkpoints"

    def saving():  # A checkpoint save has written its temporary directory.
        return directory.exists() and any("tmp" in p.name for p in directory.iterdir())

    for attempt in range(3):
        process = start_main(tmp_path, cache_env)
        if attempt == 0:
            wait_for(saving, process)  # Aimed at a save in progress.
        else:
            wait_for(lambda: logged(tmp_path), process)
            time.sleep(rng.uniform(0.0, 1.5))
        assert process.poll() is None, "the run ended before it could be killed"
        process.kill()
        process.wait()
    before = checkpoint_steps(tmp_path)[-1]
    assert before < NUM_STEPS

    resumed = finish(start_main(tmp_path, cache_env))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from step" in resumed.stderr
    assert checkpoint_steps(tmp_path)[-1] == NUM_STEPS
    # Deterministic from whichever checkpoint survived: the uninterrupted run's parameters.
    assert_same_checkpoint(reference, tmp_path, NUM_STEPS)
    # The killed runs' records past their checkpoints were dropped, none is torn or repeated.
    steps = metrics_steps(tmp_path)
    assert steps == sorted(set(steps)) and steps[-1] == NUM_STEPS


def test_second_run_on_a_busy_workdir_refuses_to_start(tmp_path):
    with WorkdirLock(str(tmp_path)):
        before = snapshot(tmp_path)
        result = run_main([f"--workdir={tmp_path}", *TINY_ARGS])
        assert_one_line_error(result, "in use by a running job", f"pid {os.getpid()}")
        assert snapshot(tmp_path) == before
    # Released with its holder: the next run may take it.
    with WorkdirLock(str(tmp_path)):
        pass


# In-process faults, on copies of conftest's `tiny_run` (4 steps, checkpoints at 2 and 4).


def copy_run(workdir, target):
    shutil.copytree(workdir, target, dirs_exist_ok=True)
    return target


def with_nan_images(monkeypatch):
    """Makes every training image NaN, as a corrupted input pipeline would."""
    load_split = tfds_reader.load_split

    def nan_split(*args, **kwargs):
        images, labels = load_split(*args, **kwargs)
        return np.full(images.shape, np.nan, np.float32), labels

    monkeypatch.setattr(tfds_reader, "load_split", nan_split)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(
    tiny_run, tmp_path, monkeypatch
):
    config, workdir, _ = tiny_run
    copy_run(workdir, tmp_path)
    checkpoints = snapshot(tmp_path / "checkpoints")
    config = config.copy_and_resolve_references()
    config.training.num_steps = 8
    with_nan_images(monkeypatch)
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient \(nan\) at step 5"):
        train_and_evaluate(config, str(tmp_path), allow_config_change=True)
    assert snapshot(tmp_path / "checkpoints") == checkpoints


def test_non_finite_steps_can_be_skipped_and_counted(tiny_run, tmp_path, monkeypatch):
    config, workdir, state = tiny_run
    copy_run(workdir, tmp_path)
    config = config.copy_and_resolve_references()
    config.training.num_steps = 8
    config.training.on_nonfinite = "skip"
    with_nan_images(monkeypatch)
    skipped = train_and_evaluate(config, str(tmp_path), allow_config_change=True)
    assert int(skipped.step) == 8
    # No update was applied: parameters, EMA and optimizer state are those of step 4.
    for name in ("params", "ema_params", "opt_state"):
        before, after = getattr(state, name), getattr(skipped, name)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
            np.testing.assert_array_equal(a, b)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["nonfinite_steps"]) for r in records if r["step"] > 4] == [
        (6, 2.0),
        (8, 2.0),
    ]


def test_changed_config_refuses_to_resume_unless_allowed(tiny_run, tmp_path):
    config, workdir, _ = tiny_run
    copy_run(workdir, tmp_path)
    before = snapshot(tmp_path)
    changed = config.copy_and_resolve_references()
    changed.training.learning_rate = 1e-3
    changed.model.embed_dim = 32
    with pytest.raises(UserError) as error:
        train_and_evaluate(changed, str(tmp_path))
    message = str(error.value)
    assert "model.embed_dim: 16 -> 32" in message
    assert "training.learning_rate: 0.002 -> 0.001" in message
    assert "--allow_config_change" in message
    assert snapshot(tmp_path) == before

    # What is learned stays the same: logging, checkpointing and sampling may change.
    harmless = config.copy_and_resolve_references()
    harmless.training.log_every = 4
    harmless.sampling.num_steps = 7
    train_and_evaluate(harmless, str(tmp_path))

    allowed = config.copy_and_resolve_references()
    allowed.training.learning_rate = 1e-3
    train_and_evaluate(allowed, str(tmp_path), allow_config_change=True)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["training"]["learning_rate"] == 1e-3


@pytest.mark.parametrize("damage", ["truncate_metadata", "truncate_arrays"])
def test_corrupted_newest_checkpoint_falls_back_to_the_previous_one(
    damage, tiny_run, tmp_path, caplog
):
    config, workdir, state = tiny_run
    copy_run(workdir, tmp_path)
    broken = tmp_path / "checkpoints" / "4"
    if damage == "truncate_metadata":
        victims = [broken / "default" / "_METADATA"]
    else:
        victims = list((broken / "default" / "ocdbt.process_0" / "d").iterdir())
    for victim in victims:
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])

    with caplog.at_level("WARNING", logger="jaxdiff"):
        again = train_and_evaluate(config, str(tmp_path))
    assert f"checkpoint {broken} is unreadable" in caplog.text
    assert "using checkpoint 2 instead" in caplog.text
    # Set aside, not deleted; then steps 3-4 were trained again, to the same result.
    assert (tmp_path / "checkpoints_unreadable" / "4").is_dir()
    assert checkpoint_steps(tmp_path) == [2, 4]
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


def test_only_checkpoint_corrupted_is_a_clear_error(tiny_run, tmp_path):
    config, workdir, _ = tiny_run
    copy_run(workdir, tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "2")
    metadata = tmp_path / "checkpoints" / "4" / "default" / "_METADATA"
    metadata.write_bytes(b"{")
    with pytest.raises(UserError, match=r"is unreadable .* no older checkpoint") as error:
        train_and_evaluate(config, str(tmp_path))
    assert str(tmp_path / "checkpoints" / "4") in str(error.value)
    assert (tmp_path / "checkpoints" / "4").is_dir()  # Left where it was.


def test_two_processes_train_like_one_process_with_two_devices(tmp_path, cache_env):
    """jax.distributed on localhost (the multi-host path): two processes with one device
    each train data-parallel, bit for bit like one process with two devices."""
    args = cli_flags({**tiny_overrides(), "training.sample_at_checkpoints": False})

    def start(workdir, *extra, devices=1):
        command = [sys.executable, "main.py", "--config=configs/mnist.py", *args, *extra]
        return subprocess.Popen(
            [*command, f"--workdir={workdir}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(
                os.environ,
                **cache_env,
                XLA_FLAGS=xla_flags(devices),
            ),
        )

    with socket.socket() as s:  # A free port for the coordinator.
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    distributed = [f"--coordinator_address=localhost:{port}", "--num_processes=2"]
    processes = [start(tmp_path / "two", *distributed, f"--process_id={i}") for i in range(2)]
    processes.append(start(tmp_path / "one", devices=2))
    results = [finish(p) for p in processes]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "2 device(s)" in result.stderr
    for step in (2, 4):
        assert_same_checkpoint(tmp_path / "two", tmp_path / "one", step)
