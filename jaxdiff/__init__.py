"""jaxdiff: score-based diffusion image generation in JAX/Flax.

    import jaxdiff
    from jaxdiff.configs import get_config

    jaxdiff.train(get_config("mnist"), "runs/mnist")       # = train_and_evaluate
    pipeline = jaxdiff.load("runs/mnist")                   # latest checkpoint
    images, labels = pipeline.sample(16)                    # uint8 (16, 28, 28, 1)

Importing the package is cheap: JAX and the rest load on first use of a name.
"""

import importlib

from jaxdiff.errors import UserError

# Public name -> the module that defines it.
_LAZY = {
    "load": "jaxdiff.pipeline",
    "Pipeline": "jaxdiff.pipeline",
    "read_config": "jaxdiff.pipeline",
    "image_grid": "jaxdiff.visualize",
    "save_png": "jaxdiff.visualize",
    "save_images": "jaxdiff.sample",
    "write_progress": "jaxdiff.visualize",
    "write_loss_curves": "jaxdiff.loss_curve",
    "keep_freed_memory": "jaxdiff.host_memory",
}

__all__ = [
    "Pipeline",
    "UserError",
    "image_grid",
    "keep_freed_memory",
    "load",
    "read_config",
    "save_images",
    "save_png",
    "train",
    "write_loss_curves",
    "write_progress",
]


def __getattr__(name: str):
    if name == "train":  # The module, callable as train(config, workdir).
        return importlib.import_module("jaxdiff.train")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxdiff' has no attribute {name!r}")
