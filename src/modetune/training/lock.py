"""One training per run directory: an advisory lock file that names its owner and dies with it.

The lock is `fcntl.flock` on `<output>/.modetune-train.lock`. The kernel releases a flock when the process
that holds it exits for any reason (including `kill -9` or a node reboot), so a dead training can never
leave the directory stuck; the file's content (pid, host, start time) only serves the error message of a
second training that finds the lock held.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from modetune.errors import ModetuneError

LOCK_NAME = ".modetune-train.lock"


class RunLockedError(ModetuneError):
    """Another live training holds the run directory."""


class OutputNotWritableError(ModetuneError):
    """The output directory cannot be written (permissions, read-only file system, no space)."""


class RunLock:
    """A held lock on a run directory; `release()` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _owner_text(owner: dict[str, Any]) -> str:
    if not owner:
        return "another process (its lock file is being written)"
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started {owner.get('started', '?')}"


def read_lock_owner(directory: str | os.PathLike[str], name: str = LOCK_NAME) -> dict[str, Any]:
    """The owner recorded in a directory's lock file ({} if none or unreadable)."""
    try:
        return json.loads((Path(directory) / name).read_text())
    except (OSError, ValueError):
        return {}


def acquire_run_lock(directory: Path, name: str = LOCK_NAME) -> RunLock:
    """Lock `directory` (which must exist) for this process, or raise naming the process that holds it. `name`
    is the lock file's: a training's by default; a runner that hands out cells uses a file of its own."""
    import fcntl

    path = directory / name
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputNotWritableError(
                f"cannot write to {directory} ({exc.strerror}); choose a writable --output"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = read_lock_owner(directory, name)
            os.close(fd)
            raise RunLockedError(
                f"{directory} is in use by another training ({_owner_text(owner)}); wait for it to finish, "
                "stop it, or choose another --output"
            ) from None
        # The previous owner unlinks the file as it releases; if that happened between our open and our
        # flock, we hold a lock on a deleted file: start again on the new one.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(owner) + "\n").encode())
        except OSError as exc:
            os.close(fd)
            raise OutputNotWritableError(f"cannot write to {directory} ({exc.strerror})") from None
        return RunLock(path, fd)
