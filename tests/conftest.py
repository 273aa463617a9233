"""Shared fixtures: the offline TFDS directory and a shrunken MNIST config."""

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_TFDS = ROOT.parent / "shared" / "data" / "tensorflow_datasets"

# Tests read the prepared offline datasets when they are there (CI, dev machines).
if "TFDS_DATA_DIR" not in os.environ and SHARED_TFDS.is_dir():
    os.environ["TFDS_DATA_DIR"] = str(SHARED_TFDS)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent XLA cache for the session: tests that build the same programs
    (the tiny configs recur across modules) compile them once."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


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
        "sampling.num_samples": 4,
        "sampling.num_steps": 5,
    }


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
    from configs import mnist

    return apply_overrides(mnist.get_config(), tiny_overrides())
