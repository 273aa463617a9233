"""Workdir guards: creation, a lock that keeps two runs apart, the config it was made with.

A training run holds `workdir/.lock` (an advisory `flock`, released by the
kernel when the process dies, so a killed run leaves no stale lock) and
refuses to resume with a config that would change what is learned.
"""

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections

from jaxdiff.configs import RUN_CONFIG_FILE, default, read_json
from jaxdiff.core import preemption
from jaxdiff.core.errors import UserError, shell_command
from jaxdiff.models import NETWORKS

CONFIG_FILE = RUN_CONFIG_FILE
LOCK_FILE = ".lock"

# Fields a resumed run may change freely: they decide how often the run logs,
# saves or draws samples, where the data is read from, or how steps are batched
# into compiled calls, but not what the model learns.
SAFE_TO_CHANGE = (
    "data.data_dir",
    "data.download",
    # Where the data is kept and how it is read: the same batches either way.
    "data.cache_dir",
    "data.on_device",
    # The same step in less memory.
    "model.remat",
    "training.grad_accum_steps",
    "sampling.",
    "training.log_every",
    "training.checkpoint_every",
    "training.keep_checkpoints",
    "training.sample_at_checkpoints",
    "training.steps_per_call",
    "training.on_nonfinite",
    "autoencoder.log_every",
    "autoencoder.checkpoint_every",
    "autoencoder.keep_checkpoints",
    "autoencoder.steps_per_call",
    "classifier.log_every",
    "classifier.checkpoint_every",
    "classifier.keep_checkpoints",
    "classifier.steps_per_call",
    "classifier.on_nonfinite",
    # Evaluation settings never change what is trained.
    "eval.",
)

# Groups a task does not read: changing them cannot change what it learns.
UNUSED_BY_TASK = {
    "diffusion": ("classifier.",),
    "classifier": ("model.", "sde.", "training.", "autoencoder.", "sampling."),
}


def prepare_workdir(workdir: str) -> None:
    """Creates the workdir, or fails with one line if it cannot be written."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create workdir {workdir}: {e.strerror}") from None
    if not os.access(workdir, os.W_OK):
        raise UserError(f"workdir {workdir} is not writable")


def config_as_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON values, exactly as `config.json` stores it."""
    return json.loads(config.to_json_best_effort())


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the resolved config as `workdir/config.json` (atomically)."""
    path = os.path.join(workdir, CONFIG_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(config_as_dict(config), f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with, from `workdir/config.json`.

    JSON has no tuples, so lists become tuples again (every list-valued field
    is a tuple). The values are laid over `configs/default.py`, so a run
    written before a field existed gets that field's default
    (`jaxdiff.configs.read_json`).

    Raises:
      UserError: no config.json in `workdir`, or one that cannot be read.
    """
    path = os.path.join(os.path.abspath(workdir), CONFIG_FILE)
    if not os.path.exists(path):
        raise UserError(f"no {CONFIG_FILE} in {os.path.dirname(path)}: pass the run's config")
    return read_json(path)


def config_changes(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, Any, Any]]:
    """(field, value in the workdir's config.json, value now) for each field that matters.

    Empty for a workdir without `config.json` (a new run) and for changes to
    the fields of `SAFE_TO_CHANGE`. `training.num_steps` counts as a change
    unless the learning-rate schedule is constant, because the cosine decay
    is stretched over it.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            before = _flatten(json.load(f))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    now = _flatten(config_as_dict(config))
    # A network's former name (an alias, as runs written before a rename store it)
    # is the same network.
    for fields in (before, now):
        if "model.name" in fields:
            fields["model.name"] = NETWORKS.canonical(fields["model.name"])
    unused = UNUSED_BY_TASK.get(config.get("task", "diffusion"), ())
    defaults = None
    changes = []
    for field in sorted(before.keys() | now.keys()):
        old, new = before.get(field, "<absent>"), now.get(field, "<absent>")
        if old == new or field.startswith(SAFE_TO_CHANGE) or field.startswith(unused):
            continue
        if old == "<absent>":
            # A field added to jaxdiff after the run started: at its default it
            # asks for what the run did before the field existed.
            if defaults is None:
                defaults = _default_fields()
            if new == defaults.get(field):
                continue
        group = field.split(".")[0]
        if field.endswith(".num_steps") and now.get(f"{group}.schedule") == "constant":
            continue
        changes.append((field, old, new))
    return changes


# Fields that decide what a trained run's parameters compute: sampling or
# evaluating a run with a config that differs in one of them would load
# parameters of another network (or read the same ones as another function).
DEFINE_THE_MODEL = (
    "model.",
    "sde.",
    "data.dataset",
    "data.image_size",
    "data.channels",
    "data.class_names",
    "data.centered",
    "autoencoder.enabled",
    "autoencoder.channels",
    "autoencoder.num_res_blocks",
    "autoencoder.latent_channels",
    "autoencoder.variational",
)


def check_model_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses to load a run with a config that describes another model than its config.json.

    Raises:
      UserError: naming every such field, with the overrides that match the run.
    """
    changes = [c for c in config_changes(config, workdir) if c[0].startswith(DEFINE_THE_MODEL)]
    if changes:
        listed = "; ".join(f"{field} {old!r} there, {new!r} here" for field, old, new in changes)
        overrides = shell_command(
            *(f"--config.{f}={_flag_value(_run_value(f, old))}" for f, old, _ in changes)
        )
        raise UserError(
            f"{workdir} was trained with another model than this config describes ({listed}); "
            f"add {overrides}"
        )


def _run_value(field: str, stored: Any) -> Any:
    """What the run used: its config.json value, or for a field added since, the default."""
    if stored != "<absent>":
        return stored
    return _default_fields()[field]


def _default_fields() -> dict[str, Any]:
    """Every config field at its default, flattened as config.json's fields are."""

    return _flatten(config_as_dict(default.get_config()))


def _flag_value(value: Any) -> str:
    """A config.json value as a --config override spells it: a list as a tuple literal."""
    if isinstance(value, list):
        # Strings in double quotes: the shell quoting of the whole argument stays readable.
        items = [json.dumps(v) if isinstance(v, str) else _flag_value(v) for v in value]
        return "(" + ",".join(items) + ("," if len(items) == 1 else "") + ")"
    return str(value)


def check_config(config: ml_collections.ConfigDict, workdir: str, allow_change: bool) -> None:
    """Refuses to resume a workdir whose config.json differs from `config` where it matters.

    Raises:
      UserError: naming every changed field, unless `allow_change`.
    """
    changes = config_changes(config, workdir)
    if changes and not allow_change:
        listed = "; ".join(f"{field}: {old!r} -> {new!r}" for field, old, new in changes)
        raise UserError(
            f"the config differs from the one {workdir} was trained with ({listed}); "
            "use another --workdir, or pass --allow_config_change to resume with the new config"
        )


@contextlib.contextmanager
def training_workdir(
    config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False
) -> Iterator[str]:
    """What every training run does around its loop; yields the absolute workdir.

    Creates the workdir, refuses a resume with a changed config (unless
    allowed), locks it and writes `config.json` (process 0 only: the other
    processes of a multi-host job share the workdir), and records stop
    signals for the duration (see `preemption`).
    """
    workdir = os.path.abspath(workdir)
    prepare_workdir(workdir)
    is_main = jax.process_index() == 0
    check_config(config, workdir, allow_config_change)
    with WorkdirLock(workdir) if is_main else contextlib.nullcontext():
        if is_main:
            write_config(config, workdir)
        with preemption.stop_signals_caught():
            yield workdir


class WorkdirLock:
    """An exclusive lock on a workdir, held for the lifetime of a training run.

    Use as a context manager. A second run on the same workdir fails at once
    with the holder's pid and host. The file is never deleted (deleting a lock
    file races with a run that is opening it); the lock is the `flock` on it.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._file = None

    def __enter__(self) -> "WorkdirLock":
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UserError(
                f"workdir {os.path.dirname(self.path)} is in use by a running job ({holder}); "
                f"wait for it to finish or stop it (lock: {self.path})"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc_info) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
