"""The exception for errors in what a user asked for; the `mixrl` command prints its message as one line and exits
nonzero, while any other exception (a bug) keeps its traceback. No dependencies, so any module can raise it."""

from __future__ import annotations

import importlib
from types import ModuleType


class UsageError(ValueError):
    """A problem with what the user asked for (a flag, a path, a file); its message names the problem and the fix."""


class MissingPathError(UsageError, FileNotFoundError):
    """A run directory, checkpoint or dataset that the user named does not exist."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`, a package of mixrl's optional extra `extra`, or raise a UsageError that names the extra:
    "<purpose> needs the <extra> extra (No module named ...): pip install 'mixrl[<extra>]'". Call it before
    writing anything, so that a missing extra leaves nothing behind."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        reason = str(err).splitlines()[0] if str(err) else f"cannot import {module}"
        raise UsageError(f"{purpose} needs the {extra} extra ({reason}): pip install 'mixrl[{extra}]'") from None
