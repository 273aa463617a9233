"""The one exception type for mistakes a user can fix (bad config, missing data, ...)."""


class UserError(Exception):
    """A problem with the user's input: main.py prints it as one line and exits non-zero."""
