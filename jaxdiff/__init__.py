"""jaxdiff: score-based diffusion image generation in JAX/Flax.

    import jaxdiff
    from jaxdiff.configs import get_config

    jaxdiff.train(get_config("mnist"), "runs/mnist")       # = training.train_and_evaluate
    pipeline = jaxdiff.load("runs/mnist")                   # latest checkpoint
    images, labels = pipeline.sample(16)                    # uint8 (16, 28, 28, 1)

Importing the package is cheap: JAX and the rest load on first use of a name.
Editors and type checkers see the names through the imports under TYPE_CHECKING.
"""

import importlib
from typing import TYPE_CHECKING

from jaxdiff.core.errors import UserError

if TYPE_CHECKING:
    from jaxdiff.core.host_memory import keep_freed_memory
    from jaxdiff.core.visualize import image_grid, save_png, write_progress
    from jaxdiff.generation import save_images
    from jaxdiff.pipeline import Pipeline, load
    from jaxdiff.training.loss_curve import write_loss_curves
    from jaxdiff.training.score import train_and_evaluate as train
    from jaxdiff.training.workdir import read_config

# Public name -> (the module that defines it, its name there).
_LAZY = {
    "load": ("jaxdiff.pipeline", "load"),
    "Pipeline": ("jaxdiff.pipeline", "Pipeline"),
    "read_config": ("jaxdiff.training.workdir", "read_config"),
    "train": ("jaxdiff.training.score", "train_and_evaluate"),
    "image_grid": ("jaxdiff.core.visualize", "image_grid"),
    "save_png": ("jaxdiff.core.visualize", "save_png"),
    "save_images": ("jaxdiff.generation", "save_images"),
    "write_progress": ("jaxdiff.core.visualize", "write_progress"),
    "write_loss_curves": ("jaxdiff.training.loss_curve", "write_loss_curves"),
    "keep_freed_memory": ("jaxdiff.core.host_memory", "keep_freed_memory"),
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
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # Looked up once.
        return value
    raise AttributeError(f"module 'jaxdiff' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
