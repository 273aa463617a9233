"""Writes the run that tests/test_compatibility.py loads: a tiny MNIST workdir and its samples.

    python tests/data/run_7ee3d19/make_run.py

It was run on the code of commit 7ee3d19 (the last before the package was
grouped into layers), with jax 0.10.2 on a CPU, reading the tests' MNIST subset:

    git archive 7ee3d19 | tar -x -C /tmp/jaxdiff_7ee3d19
    cd /tmp/jaxdiff_7ee3d19 && TFDS_DATA_DIR=<the tests' data directory> JAX_PLATFORMS=cpu \\
        python <this file>

`workdir/` is the run (config.json, metrics.jsonl, the orbax checkpoint of
step 2), `samples.npz` what `Pipeline.sample` drew from it then. Run on the
current code it writes what that code computes; rerun it only to replace the
record of an older format on purpose.
"""

import os
import pathlib
import shutil

import numpy as np
from jaxdiff.configs import get_config

import jaxdiff

HERE = pathlib.Path(__file__).resolve().parent
OVERRIDES = {
    "data.train_split": "train[:64]",
    "model.channels": (4, 8, 8, 8),
    "model.embed_dim": 8,
    "training.num_steps": 2,
    "training.batch_size": 8,
    "training.warmup_steps": 1,
    "training.log_every": 1,
    "training.checkpoint_every": 2,
    "training.steps_per_call": 1,
    "training.sample_at_checkpoints": False,
}
# What the test samples with: the default sampler (edm) at 4 steps, 3 images.
SAMPLE = dict(num=3, steps=4, seed=5)


def config():
    c = get_config("mnist")
    for name, value in OVERRIDES.items():
        group, field = name.split(".")
        c[group][field] = value
    return c


def main() -> None:
    workdir = HERE / "workdir"
    shutil.rmtree(workdir, ignore_errors=True)
    jaxdiff.train(config(), str(workdir))
    for name in ("samples", "loss.png"):  # Pictures the test does not need.
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            os.remove(path)
    images, labels = jaxdiff.load(str(workdir)).sample(**SAMPLE)
    np.savez_compressed(HERE / "samples.npz", images=images, labels=labels)


if __name__ == "__main__":
    main()
