"""The exception for errors in what a user asked for; the `mixrl` command prints its message as one line and exits
nonzero, while any other exception (a bug) keeps its traceback. No dependencies, so any module can raise it."""

from __future__ import annotations


class UsageError(ValueError):
    """A problem with what the user asked for (a flag, a path, a file); its message names the problem and the fix."""


class MissingPathError(UsageError, FileNotFoundError):
    """A run directory, checkpoint or dataset that the user named does not exist."""
