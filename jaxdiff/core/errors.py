"""The one exception type for mistakes a user can fix (bad config, missing data, ...)."""

import shlex


class UserError(Exception):
    """A problem with the user's input: main.py prints it as one line and exits non-zero."""


def shell_command(*args: str) -> str:
    """A command line a message suggests, each argument quoted where the shell needs it.

    `shell_command("python", "main.py", "--config.model.attention_resolutions=(7,)")`
    gives `python main.py '--config.model.attention_resolutions=(7,)'`, which pastes
    into bash as one argument.
    """
    return " ".join(shlex.quote(arg) for arg in args)
