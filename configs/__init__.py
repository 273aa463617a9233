"""The config files, also reachable by name from Python (installed as `jaxdiff.configs`).

from jaxdiff.configs import get_config
config = get_config("mnist_cond")            # configs/mnist_cond.py
config = get_config("mnist_latent:cond")     # as --config=configs/mnist_latent.py:cond
config.training.num_steps = 1000             # any field can be overridden

`python main.py --list_configs` prints `list_configs()`.
"""

import ast
import importlib
import json
import os

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
# Where a run keeps the config it was trained with (resolved), in its workdir.
RUN_CONFIG_FILE = "config.json"


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


def variants(name: str) -> tuple[str, ...]:
    """The variants of config `name`: ("cond",) for "mnist_latent"; () for none or unknown."""
    return VARIANTS.get(ALIASES.get(name, name), ())


def list_configs() -> list[str]:
    """One line per config file: its path, its variants and its docstring's first line.

    `configs/mnist_latent.py[:cond]  MNIST, latent diffusion: ...` (with two
    variants, `[:cond|classifier]`); a former name (`ALIASES`) says which file it
    now is.
    """
    directory = os.path.dirname(os.path.abspath(__file__))
    specs, descriptions = [], []
    for name in (*NAMES, *ALIASES):
        names = variants(name)
        specs.append(f"configs/{name}.py" + (f"[:{'|'.join(names)}]" if names else ""))
        if name in ALIASES:
            descriptions.append(f"The former name of configs/{ALIASES[name]}.py.")
            continue
        with open(os.path.join(directory, f"{name}.py")) as f:
            docstring = ast.get_docstring(ast.parse(f.read())) or ""
        descriptions.append(docstring.strip().split("\n")[0])
    width = max(map(len, specs))
    return [
        f"{spec:<{width}}  {text}".rstrip() for spec, text in zip(specs, descriptions, strict=True)
    ]


def read_json(path: str) -> ml_collections.ConfigDict:
    """A config saved as JSON (a run's `config.json`), laid over `configs/default.py`.

    JSON has no tuples, so lists become tuples again (every list-valued field
    is a tuple). A run written before a field existed gets that field's default.

    Raises:
      jaxdiff.core.errors.UserError: the file cannot be read, is not a JSON
        object, or holds a value of another type than the field's.
    """
    from jaxdiff.configs import default

    from jaxdiff.core.errors import UserError

    try:
        with open(path) as f:
            saved = json.load(f)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path} holds no config: a JSON object of config fields")
    config = default.get_config()
    _merge(config, saved, path)
    return config


def _merge(config: ml_collections.ConfigDict, values: dict, path: str, prefix: str = "") -> None:
    from jaxdiff.core.errors import UserError

    for name, value in values.items():
        if isinstance(value, dict) and isinstance(config.get(name), ml_collections.ConfigDict):
            _merge(config[name], value, path, f"{prefix}{name}.")
            continue
        try:
            config[name] = tuple(value) if isinstance(value, list) else value
        except TypeError as e:  # ConfigDict refuses a value of another type.
            raise UserError(f"{path}: field {prefix}{name}: {e}") from None
