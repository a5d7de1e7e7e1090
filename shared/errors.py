"""The one exception family for bad input.

Every error that a user can fix by changing a flag, a path or a file (an impossible world size, an
indivisible shape, missing or malformed data, a corrupt checkpoint, a NaN loss) derives from
:class:`UsageError`. The command-line entry point (:func:`shared.train.cli.entry_point`) prints
such an error as one line, ``error: <what is wrong>; <how to fix it>``, and exits with status 2;
any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class UsageError(ValueError):
    """Bad input that the user can fix; the message names the problem and the fix."""


class DataError(UsageError):
    """Missing or malformed data: the message names the path, what was expected and found."""
