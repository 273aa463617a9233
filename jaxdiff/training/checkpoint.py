"""Checkpoints under `workdir/checkpoints`: the only module that knows orbax."""

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxdiff.core.errors import UserError

logger = logging.getLogger("jaxdiff")


class UnreadableCheckpointError(UserError):
    """A checkpoint whose files cannot be read back (truncated, corrupted)."""

    def __init__(self, step_dir: str, cause: Exception):
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        super().__init__(f"checkpoint {step_dir} is unreadable ({type(cause).__name__}: {reason})")


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

    def restore(self, abstract_state: Any, step: int | None = None, set_aside: bool = False) -> Any:
        """Restores into the structure, shapes and shardings of `abstract_state`.

        Without `step`, the newest checkpoint that can be read: an unreadable
        one (truncated or corrupted files, e.g. a disk that filled up) is
        reported as a warning naming it and the next older one is used. With
        `set_aside` (training, which will write that step again), the broken
        step directory is moved to `checkpoints_unreadable/` instead of deleted.

        Args:
          abstract_state: pytree of jax.ShapeDtypeStruct (with shardings).
          step: which checkpoint; the newest readable one if None.
          set_aside: move unreadable checkpoints out of the way.

        Raises:
          UserError: no (readable) checkpoint, or one whose arrays do not fit
            `abstract_state` (the run was made with another model or optimizer config).
        """
        if step is not None:
            return self._restore_step(abstract_state, step)
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise UserError(f"no checkpoint in {self.directory}: train first (--mode=train)")
        # Newest first, each with the one to fall back on (None for the oldest).
        for candidate, older in zip(steps, [*steps[1:], None], strict=True):
            try:
                return self._restore_step(abstract_state, candidate)
            except UnreadableCheckpointError as e:
                if older is None:
                    raise UserError(
                        f"{e}; there is no older checkpoint to fall back on: move "
                        f"{self._step_dir(candidate)} away to start again from scratch"
                    ) from None
                logger.warning("%s; using checkpoint %d instead", e, older)
                if set_aside:
                    self._set_aside(candidate)

    def _restore_step(self, abstract_state: Any, step: int) -> Any:
        if step not in self._manager.all_steps():
            available = ", ".join(map(str, self._manager.all_steps())) or "none"
            raise UserError(f"no checkpoint {step} in {self.directory} (available: {available})")
        try:
            stored = _shapes(self._manager.item_metadata(step))
        except Exception as e:
            raise UnreadableCheckpointError(self._step_dir(step), e) from None
        # Compared up front: a failed orbax restore leaves background threads that
        # print tracebacks at exit, and its message names no config field.
        wanted = _shapes(abstract_state)
        for path in sorted(stored.keys() | wanted.keys()):
            there, here = stored.get(path, "absent"), wanted.get(path, "absent")
            if there != here:
                raise UserError(
                    f"checkpoint {step} in {self.directory} does not fit this config: {path} "
                    f"is {there} there but {here} here (compare with the workdir's config.json)"
                )
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:
            raise UnreadableCheckpointError(self._step_dir(step), e) from None

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _set_aside(self, step: int) -> None:
        """Moves an unreadable step to `<workdir>/checkpoints_unreadable/` (never deletes it)."""
        target = os.path.join(os.path.dirname(self.directory), "checkpoints_unreadable", str(step))
        suffix = 0
        while os.path.exists(target + (f".{suffix}" if suffix else "")):
            suffix += 1
        target += f".{suffix}" if suffix else ""
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(self._step_dir(step), target)
        self._manager.reload()
        logger.warning("Moved unreadable checkpoint %d to %s", step, target)

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
