"""User-facing errors.

Anything a user can cause (a bad option, a missing file, a malformed record, a mismatched checkpoint)
raises `ModetuneError` with a message that names the problem and how to fix it. The CLI prints that
message and exits with status 2, without a traceback; library users catch it like any exception.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class ModetuneError(Exception):
    """An error caused by input the user can fix (config value, file, option)."""


class ConfigError(ModetuneError, ValueError):
    """An invalid configuration value; the message names the field and the allowed values."""


class UnsupportedArchitectureError(ModetuneError, ValueError):
    """The model family has no entry in the architecture table."""


class CheckpointError(ModetuneError):
    """A saved MoDE run cannot be loaded (missing, corrupt, or for a different base model)."""


class DataError(ModetuneError, ValueError):
    """A dataset file or record is malformed; the message names the file and the line/index."""


def exit_status(main: Callable[[], int | None], program: str, *, quiet: bool = False) -> int:
    """Run an entry point the way every modetune program ends: a `ModetuneError` (the user's to fix) prints
    `program: error: message` and returns 2, Ctrl-C returns 130, both without a traceback; `quiet` drops the
    message (a distributed run's other ranks, so that it is printed once)."""
    try:
        return int(main() or 0)
    except ModetuneError as exc:
        if not quiet:
            print(f"{program}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return 130
