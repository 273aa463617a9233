"""Shared fixtures: the test datasets, shrunken configs and runs trained once per session."""

import hashlib
import importlib.util
import os
import pathlib
import shutil
import tempfile

import pytest

from jaxdiff.core.host_memory import keep_freed_memory

# As main.py does, so that tests run with the allocator settings users get; here,
# before any test starts JAX (the setting needs that).
keep_freed_memory()

# The tests' networks are tiny, so compiling them is most of the suite's time, and
# LLVM's optimisation of the generated code is most of a compile. The tests run at
# LLVM level 0, which about halves it (XLA's own passes, which decide what is
# computed, are unchanged); users' runs keep XLA's default. Subprocesses inherit it.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()


# For the few tests whose time goes to running, not compiling (samplers over hundreds
# of steps on thousands of draws): the default LLVM level for that one program.
RUN_OPTIMIZED = {"xla_backend_optimization_level": 3}


def load_script(path: pathlib.Path):
    """A script outside the package (benchmarks/, docs/, tests/data/) imported as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a subprocess on `devices` fake CPU devices, with the tests' own flags."""
    return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


ROOT = pathlib.Path(__file__).resolve().parents[1]
# Small real subsets of the three datasets, in their original distribution formats.
TEST_DATA = ROOT / "tests" / "data"


def prepare_test_datasets() -> str:
    """A TFDS data directory of the shipped subsets, prepared once per machine.

    `jaxdiff.data.prepare` writes it.

    Its name carries a hash of the subsets' files, so a changed subset is prepared
    anew; it is prepared beside its final place and renamed there, so processes
    that start together (pytest-xdist's workers) never see half of it.
    """
    import tensorflow_datasets as tfds

    from jaxdiff.data import prepare

    tfds.disable_progress_bar()  # Its bars would land in the middle of pytest's output.
    digest = hashlib.sha256()
    for path in sorted(TEST_DATA.rglob("*.gz")):
        digest.update(path.name.encode() + path.read_bytes())
    target = pathlib.Path(tempfile.gettempdir()) / f"jaxdiff_test_tfds_{digest.hexdigest()[:12]}"
    if not target.is_dir():
        scratch = tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent)
        for name in prepare.DATASET_NAMES:
            prepare.prepare(name, scratch, source_dir=str(TEST_DATA / name))
        try:
            os.rename(scratch, target)
        except OSError:  # Another process got there first.
            shutil.rmtree(scratch, ignore_errors=True)
    return str(target)


# The tests read TFDS_DATA_DIR when it is set (CI points it at the full datasets),
# else the shipped subsets: a clone with nothing beside it passes on its own.
if not os.environ.get("TFDS_DATA_DIR"):
    os.environ["TFDS_DATA_DIR"] = prepare_test_datasets()


# One persistent XLA cache for the session, inherited by the main.py subprocesses:
# the tiny configs recur across tests and processes, and each program then
# compiles once. (A test that needs its own cache sets the variable itself.)
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxdiff_xla_cache_")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"


@pytest.fixture(scope="session", autouse=True)
def compilation_cache():
    """Points in-process JAX at the session cache, even if it was imported before us."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 0)),
    )
    jax.config.update(
        "jax_persistent_cache_min_entry_size_bytes",
        int(os.environ.get("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", -1)),
    )


def run_script_on_devices(script: str, devices: int, timeout: int = 600) -> dict:
    """Runs a script in a new process on `devices` CPU devices; its last line's JSON."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS=xla_flags(devices))
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def tiny_overrides() -> dict[str, object]:
    """Config overrides that make a real MNIST run take seconds on a CPU."""
    return {
        "data.train_split": "train[:256]",
        "model.channels": (8, 16, 16, 16),
        "model.embed_dim": 16,
        "training.num_steps": 4,
        "training.batch_size": 16,
        "training.warmup_steps": 2,
        "training.log_every": 2,
        "training.checkpoint_every": 2,
        # One step per compiled call, not two: half the program to compile.
        "training.steps_per_call": 1,
        "sampling.num_samples": 4,
        # The cheapest sampler per step (5 NFE); the samplers' own tests cover the others.
        "sampling.sampler": "euler_maruyama",
        "sampling.num_steps": 5,
    }


def cli_flags(overrides: dict[str, object]) -> list[str]:
    """The same overrides as main.py flags (one argv item each, so no quoting needed)."""
    return [f"--config.{name}={value}" for name, value in overrides.items()]


def apply_overrides(config, overrides):
    for name, value in overrides.items():
        *groups, field = name.split(".")
        node = config
        for group in groups:
            node = node[group]
        node[field] = value
    return config


@pytest.fixture
def tiny_config():
    from jaxdiff.configs import mnist

    return apply_overrides(mnist.get_config(), tiny_overrides())


def tiny_cond_overrides() -> dict[str, object]:
    """`tiny_overrides` plus what a shrunken conditional config needs."""
    return {
        **tiny_overrides(),
        "model.num_heads": 2,
        "model.context_dim": 16,
        "sampling.samples_per_class": 2,
    }


def tiny_latent_overrides() -> dict[str, object]:
    """`tiny_overrides` plus a small, briefly trained autoencoder."""
    return {
        **tiny_overrides(),
        "autoencoder.channels": (8, 16, 16),
        "autoencoder.num_steps": 4,
        "autoencoder.batch_size": 16,
        "autoencoder.log_every": 2,
        "autoencoder.checkpoint_every": 2,
        "autoencoder.eval_split": "test[:100]",
        "model.channels": (16, 16),
        "autoencoder.steps_per_call": 1,
    }


def _train_tiny(tmp_path_factory, name, overrides):
    from jaxdiff.configs import get_config

    from jaxdiff.training.score import train_and_evaluate

    config = apply_overrides(get_config(name), overrides)
    workdir = tmp_path_factory.mktemp(name.replace(":", "_"))
    state = train_and_evaluate(config, str(workdir))
    return config, workdir, state


# Trained once per test session and shared: (config, workdir, final state), with
# checkpoints at steps 2 and 4. Tests may add samples but must not change the
# checkpoints.
@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return _train_tiny(tmp_path_factory, "mnist", tiny_overrides())


@pytest.fixture(scope="session")
def tiny_cond_run(tmp_path_factory):
    return _train_tiny(tmp_path_factory, "mnist_cond", tiny_cond_overrides())


@pytest.fixture(scope="session")
def tiny_latent_run(tmp_path_factory):
    return _train_tiny(tmp_path_factory, "mnist_latent", tiny_latent_overrides())


def tiny_classifier_overrides() -> dict[str, object]:
    """A feature classifier that trains in seconds and still beats chance clearly."""
    return {
        "data.train_split": "train[:1024]",
        "classifier.channels": (8, 16),
        "classifier.norm_groups": 2,
        "classifier.num_steps": 300,
        "classifier.batch_size": 32,
        "classifier.warmup_steps": 20,
        "classifier.learning_rate": 3e-3,
        "classifier.log_every": 100,
        "classifier.checkpoint_every": 100,
        "classifier.ema_decay": 0.9,
        "classifier.eval_split": "test[:500]",
    }


# The MNIST feature classifier of --mode=eval, trained once per session.
@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory):
    from jaxdiff.configs import get_config

    from jaxdiff.training.classifier import train_classifier

    config = apply_overrides(get_config("classifier_mnist"), tiny_classifier_overrides())
    workdir = tmp_path_factory.mktemp("classifier_mnist")
    state = train_classifier(config, str(workdir))
    return config, workdir, state


# The full suite's end-to-end tier: tests that train through a session-wide run
# (or mark themselves slow) are left out of the fast tier, `pytest -m "not slow"`.
_END_TO_END_FIXTURES = {"tiny_run", "tiny_cond_run", "tiny_latent_run", "tiny_classifier"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _END_TO_END_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
