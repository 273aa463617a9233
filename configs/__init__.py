"""The config files, also reachable by name from Python (installed as `jaxdiff.configs`).

from jaxdiff.configs import get_config
config = get_config("mnist_cond")            # configs/mnist_cond.py
config = get_config("mnist_latent:cond")     # as --config=configs/mnist_latent.py:cond
config.training.num_steps = 1000             # any field can be overridden
"""

import importlib

import ml_collections

# Every config file but the aliases below, by name; those with a variant take
# ":<variant>" after the name.
NAMES = (
    "mnist",
    "mnist_cond",
    "mnist_latent",
    "fashion_mnist",
    "fashion_mnist_cond",
    "fashion_mnist_latent",
    "cifar10",
    "cifar10_cond",
    "cifar10_latent",
    "classifier_mnist",
    "classifier_fashion_mnist",
    "classifier_cifar10",
    "mnist_original",
    "folder64",
)
VARIANTS = {
    "fashion_mnist_cond": ("cpu",),
    "mnist_latent": ("cond",),
    "fashion_mnist_latent": ("cond",),
    "cifar10_latent": ("cond",),
    "mnist_original": ("cond",),
    "folder64": ("cond", "classifier"),
}
# Former names of config files, each kept as a file that imports the new one.
ALIASES = {"mnist_seed": "mnist_original"}


def get_config(name: str) -> ml_collections.ConfigDict:
    """The config of `configs/<name>.py`, optionally with a variant: "mnist_latent:cond".

    "configs/mnist.py" (the command line's spelling) and the former names of
    `ALIASES` work too.

    Raises:
      jaxdiff.core.errors.UserError: an unknown name or variant, listing the valid ones.
    """
    from jaxdiff.core.errors import UserError

    module_name, _, variant = name.partition(":")
    module_name = module_name.removeprefix("configs/").removesuffix(".py")
    module_name = ALIASES.get(module_name, module_name)
    valid = ", ".join([*NAMES, *(f"{n}:{v}" for n, vs in VARIANTS.items() for v in vs)])
    if module_name not in NAMES or (variant and variant not in VARIANTS.get(module_name, ())):
        raise UserError(f"unknown config {name!r}; choose one of {valid}")
    module = importlib.import_module(f"jaxdiff.configs.{module_name}")
    return module.get_config(variant) if variant else module.get_config()
