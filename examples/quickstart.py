"""Trains MNIST for 200 steps (a minute or two on a CPU), then samples from it in Python.

    python examples/quickstart.py --workdir=runs/example

After 200 steps the samples are blurry strokes, not yet digits; how long it
takes on a CPU: docs/results.md.

Writes the run to the workdir (checkpoints, sample grids, progress.gif) and
16 samples drawn through the Python API to `<workdir>/quickstart_samples.png`.
`--smoke` trains a tiny network for 4 steps instead: a check that everything
runs, used by the tests.
"""

import argparse
import logging
import os
import sys
import time

import numpy as np

# Run from anywhere inside a clone: the configs live beside the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxdiff.configs import get_config

import jaxdiff

# A network and run small enough for a few seconds (--smoke).
SMOKE = {
    "data": {"train_split": "train[:256]"},
    "model": {"channels": (8, 16, 16, 16), "embed_dim": 16},
    "training": {"num_steps": 4, "batch_size": 16, "warmup_steps": 2, "checkpoint_every": 2},
}


def make_config(smoke: bool):
    """configs/mnist.py, cut to 200 steps: about a minute and a half on 2 CPU cores."""
    config = get_config("mnist")
    config.training.num_steps = 200
    config.training.warmup_steps = 50
    config.training.log_every = 50
    config.training.checkpoint_every = 100
    # Small grids, drawn with the default sampler (edm, 35 network evaluations each).
    config.sampling.num_samples = 16
    if smoke:
        for group, fields in SMOKE.items():
            config[group].update(fields)
        config.training.log_every = 2
        config.sampling.num_steps = 5
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/example", help="where the run is written")
    parser.add_argument("--smoke", action="store_true", help="a tiny network for 4 steps")
    args = parser.parse_args()
    # Progress lines from jaxdiff; libraries (orbax is chatty) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("jaxdiff").setLevel(logging.INFO)

    start = time.perf_counter()
    jaxdiff.train(make_config(args.smoke), args.workdir)
    trained = time.perf_counter()

    pipeline = jaxdiff.load(args.workdir)
    images, _ = pipeline.sample(16)
    path = os.path.join(args.workdir, "quickstart_samples.png")
    jaxdiff.save_png(path, jaxdiff.image_grid(images))
    print(
        f"trained {pipeline.step} steps in {trained - start:.0f} s; sampled {len(images)} "
        f"images of shape {images.shape[1:]} in {time.perf_counter() - trained:.0f} s "
        f"(pixel mean {np.mean(images):.1f}) -> {path}"
    )


if __name__ == "__main__":
    main()
