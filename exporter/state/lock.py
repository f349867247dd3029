"""StateLock: one writing process per state file, held by an flock on `<state path>.lock`.

Two daemons on one state file would both extract and spend the key's budget twice. SQLite's own
locking only serialises transactions, so the exporter takes a process-wide exclusive lock for as
long as it writes. An flock is released by the kernel when the process dies (kill -9 included),
so a stale lock file never blocks a restart; the file itself stays, because deleting a lock file
lets two processes lock two different inodes under one name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from types import TracebackType

from exporter.state.store import StateError


def lock_path(state_path: str) -> str:
    return f"{state_path}.lock"


class StateLock:
    def __init__(self, state_path: str, command: str) -> None:
        self.state_path = state_path
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        path = lock_path(self.state_path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"state file {self.state_path}: cannot create its lock file: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise StateError(
                f"state file {self.state_path} is in use by another duvo-exporter ({holder}); "
                "stop it, or give this one its own state.path"
            ) from None
        # Who holds it, for the message the next process shows; best effort, the lock is what counts.
        with contextlib.suppress(OSError):
            record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def holder_of(state_path: str) -> str | None:
    """Who writes ``state_path`` now ("pid 123 on host, `run`"), or None when no process does."""
    try:
        fd = os.open(lock_path(state_path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(_read_holder(fd))
        return None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict[str, object]:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(record: dict[str, object]) -> str:
    if "pid" not in record:
        return "a process that did not say which"
    text = f"pid {record['pid']}"
    if record.get("host") and record.get("host") != socket.gethostname():
        text += f" on {record['host']}"
    if record.get("command"):
        text += f", `{record['command']}`"
    return text
