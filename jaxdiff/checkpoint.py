"""Checkpoints under `workdir/checkpoints`: the only module that knows orbax."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxdiff.errors import UserError


class Checkpointer:
    """Saves and restores the train state; keeps the newest `keep` steps.

    Saves are asynchronous (the device-to-host copy happens before `save`
    returns, the file writing in the background); `close` waits for them.
    """

    def __init__(self, workdir: str, keep: int = 3, create: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        if not create and not os.path.isdir(self.directory):
            raise UserError(f"no checkpoint in {self.directory}: train first (--mode=train)")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create),
            item_handlers=ocp.StandardCheckpointHandler(),
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Writes `state` as checkpoint `step` (no-op if that step exists)."""
        if step not in self._manager.all_steps():
            self._manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restores into the structure, shapes and shardings of `abstract_state`.

        Args:
          abstract_state: pytree of jax.ShapeDtypeStruct (with shardings).
          step: which checkpoint; the latest if None.

        Raises:
          UserError: no checkpoint, or one whose arrays do not fit `abstract_state`
            (the run was made with another model or optimizer config).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise UserError(f"no checkpoint in {self.directory}: train first (--mode=train)")
        # Compared up front: a failed orbax restore leaves background threads that
        # print tracebacks at exit, and its message names no config field.
        stored = _shapes(self._manager.item_metadata(step))
        wanted = _shapes(abstract_state)
        for path in sorted(stored.keys() | wanted.keys()):
            there, here = stored.get(path, "absent"), wanted.get(path, "absent")
            if there != here:
                raise UserError(
                    f"checkpoint {step} in {self.directory} does not fit this config: {path} "
                    f"is {there} there but {here} here (compare with the workdir's config.json)"
                )
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"params/Conv_0/kernel": shape, ...} for any pytree of arrays or array metadata."""
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
