"""main.py's `--config`: a config file, a run's config.json, or the workdir's run.

    --config=configs/mnist.py              a Python file whose get_config() returns the config
    --config=configs/mnist_latent.py:cond  a variant: get_config("cond")
    --config=runs/mnist/config.json        the resolved config a run saved
    (no --config)                          the --workdir's config.json, when it holds a run

`--config.<field>=<value>` overrides a field in every case. A file that cannot
give a config (missing, not Python, a syntax error, no get_config, an unknown
variant) is a `UserError` naming the file and what is wrong. Nothing here
imports JAX: main.py parses its flags before JAX starts.
"""

import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable

import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxdiff import configs
from jaxdiff.core.errors import UserError

# The name ml_collections loads a config file under (`sys.modules`), kept for files that rely on it.
_MODULE_NAME = "config_config"


def define_config_flag(
    flag_values: flags.FlagValues = flags.FLAGS, sys_argv: list[str] | None = None
) -> flags.FlagHolder:
    """Defines `--config` and its `--config.<field>` overrides, loaded by `load`.

    `sys_argv`: the command line the overrides are read from (ml_collections
    reads `sys.argv` when None).
    """
    holder = config_flags.DEFINE_config_file(
        "config",
        None,
        "Config file, e.g. configs/mnist.py (a variant: configs/mnist_latent.py:cond), or a "
        "run's config.json; without it, the --workdir's config.json (python main.py "
        "--list_configs lists the config files).",
        flag_values=flag_values,
        sys_argv=sys_argv,
    )
    # Its own parser, as ml_collections would use, but loading with `load`.
    flag_values["config"].parser = _Parser()
    return holder


class _Parser(flags.ArgumentParser):
    """Parses `--config` with `load` (one-line errors, JSON too) into a locked config."""

    def parse(self, argument: str) -> ml_collections.ConfigDict:
        config = load(argument)
        config.lock()  # As ml_collections does: an override of an unknown field is an error.
        return config

    def flag_type(self) -> str:
        return "config object"


def load(spec: str) -> ml_collections.ConfigDict:
    """The config `--config=<spec>` names: `path.py`, `path.py:variant` or `path.json`.

    Raises:
      UserError: one line naming the file and what is wrong with it.
    """
    path, has_variant, variant = spec.partition(":")
    what = f"--config={spec}"
    if not os.path.exists(path):
        raise UserError(f"{what}: no such file (python main.py --list_configs lists the configs)")
    if os.path.isdir(path):
        saved = os.path.join(path, configs.RUN_CONFIG_FILE)
        hint = f"; the run's config is {saved}" if os.path.isfile(saved) else ""
        raise UserError(f"{what} is a directory, not a config file{hint}")
    if path.endswith(".json"):
        if has_variant:
            raise UserError(f"{what}: a saved config has no variants")
        return configs.read_json(path)
    get_config = _load_module(path, what)
    if has_variant:
        _check_variant(what, path, variant, get_config)
    try:
        config = get_config(variant) if has_variant else get_config()
    except Exception as e:
        raise UserError(f"{what}: get_config() {_raised(e, path)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(
            f"{what}: get_config() returned {type(config).__name__}, not an "
            "ml_collections.ConfigDict"
        )
    return config


def _load_module(path: str, what: str) -> Callable[..., object]:
    """The `get_config` of the Python file `path`, executed as ml_collections would."""
    loader = importlib.machinery.SourceFileLoader(_MODULE_NAME, path)
    spec = importlib.util.spec_from_loader(_MODULE_NAME, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module
    try:
        loader.exec_module(module)
    except SyntaxError as e:
        where = f"line {e.lineno}: {e.msg}"
        if not path.endswith(".py"):
            raise UserError(
                f"{what} is not a Python config file ({where}); a config is a .py file with "
                "get_config() or a run's config.json"
            ) from None
        raise UserError(f"{what}: syntax error at {where}") from None
    except OSError as e:
        raise UserError(f"{what}: cannot read {path}: {e.strerror or e}") from None
    except Exception as e:
        raise UserError(f"{what}: loading the file {_raised(e, path)}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise UserError(
            f"{what}: the file defines no get_config(), the function that returns the config"
        )
    return get_config


def _raised(error: Exception, path: str) -> str:
    """'raised NameError: name 'x' is not defined (line 3)', the line being `path`'s."""
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(error.__traceback__)
        if os.path.abspath(frame.filename) == os.path.abspath(path)
    ]
    where = f" (line {lines[-1]})" if lines else ""
    return f"raised {type(error).__name__}: {error}{where}"


def _check_variant(what: str, path: str, variant: str, get_config: Callable[..., object]) -> None:
    """Refuses a variant that the config file does not have.

    A file of a configs/ directory has the variants `configs.VARIANTS` lists
    (those `configs.get_config` accepts); another file's get_config decides,
    if it takes an argument at all.
    """
    known = _registered_variants(path)
    if known is None:
        parameters = inspect.signature(get_config).parameters.values()
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if any(p.kind in (*kinds, inspect.Parameter.VAR_POSITIONAL) for p in parameters):
            return
        known = ()
    if not known:
        raise UserError(f"{what}: {path} has no variants; use --config={path}")
    if variant not in known:
        raise UserError(
            f"{what}: unknown variant {variant!r}; variants of {path}: {', '.join(known)}"
        )


def _registered_variants(path: str) -> tuple[str, ...] | None:
    """The variants `configs.VARIANTS` lists for a config file of a configs/ directory.

    None for any other file, whose variants only its get_config knows.
    """
    directory, name = os.path.split(os.path.abspath(path))
    name = name.removesuffix(".py")
    if os.path.basename(directory) != "configs" or name not in (*configs.NAMES, *configs.ALIASES):
        return None
    return configs.variants(name)


def _flag_value(argv: list[str], name: str) -> str | None:
    """The last value of `--name` in a command line (`--name=v` or `--name v`), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--":  # Flags end here.
            break
        if match := re.fullmatch(rf"--?{name}=(.*)", arg, re.DOTALL):
            value = match.group(1)
        elif re.fullmatch(rf"--?{name}", arg) and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def with_run_config(argv: list[str]) -> list[str]:
    """`argv` with `--config=<workdir>/config.json` added when it names no --config.

    Only where `--workdir` holds a run (its config.json): sampling, evaluating,
    editing or resuming it then needs no --config, and `--config.<field>`
    overrides apply to the run's config.

    Raises:
      UserError: `--config.<field>` overrides with no config to apply them to.
    """
    args = argv[1 : argv.index("--")] if "--" in argv[1:] else argv[1:]
    if any(re.match(r"--?config(=|$)", arg) for arg in args):
        return argv
    workdir = _flag_value(args, "workdir")
    saved = os.path.join(workdir or "", configs.RUN_CONFIG_FILE)
    if workdir and os.path.isfile(saved):
        return [argv[0], f"--config={saved}", *argv[1:]]
    if any(re.match(r"--?(no)?config\.", arg) for arg in args):
        check_workdir(workdir)
        raise UserError(missing_config(_flag_value(args, "mode") or "train", workdir))
    return argv


def check_workdir(workdir: str | None) -> None:
    """Refuses a missing --workdir and one that names a file.

    Raises:
      UserError: saying which.
    """
    if not workdir:
        raise UserError("--workdir is required: the run's directory, e.g. --workdir=runs/mnist")
    if os.path.isfile(workdir):
        raise UserError(f"--workdir={workdir} is a file, not a directory")


def missing_config(mode: str, workdir: str) -> str:
    """The error for a command line without --config whose --workdir holds no run."""
    if mode == "train":
        return (
            f"--config is needed to start a run: {workdir} has no {configs.RUN_CONFIG_FILE} to "
            "resume from; e.g. --config=configs/mnist.py (python main.py --list_configs "
            "lists the configs)"
        )
    return (
        f"--mode={mode} without --config needs the --workdir of a trained run, and {workdir} "
        f"has no {configs.RUN_CONFIG_FILE}"
    )
