"""FileSink: JSON Lines, one event per line, appended and fsynced per batch ("-" = stdout)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Literal

import structlog

from sinks.base import Event, SendResult, SinkError
from sinks.settings import SinkSettings

log = structlog.get_logger(__name__)
_TAIL_CHUNK = 65536


class FileSinkSettings(SinkSettings):
    type: Literal["file"]
    path: str


def encode(events: Sequence[Event]) -> bytes:
    return b"".join(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for event in events)


class FileSink:
    def __init__(self, settings: FileSinkSettings) -> None:
        self.name = settings.name
        self._path = settings.path
        self._file: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        if self._file is None:
            if self._path == "-":
                self._file = sys.stdout.buffer
            else:
                directory = os.path.dirname(os.path.abspath(self._path))
                os.makedirs(directory, exist_ok=True)
                self._file = open(self._path, "ab+")  # noqa: SIM115 - kept open across batches
                _drop_torn_tail(self._file, self._path)
        return self._file

    def send(self, events: Sequence[Event]) -> SendResult:
        start: int | None = None
        try:
            out = self._open()
            if self._path != "-":
                start = out.seek(0, os.SEEK_END)
            out.write(encode(events))
            out.flush()
            if self._path != "-":
                os.fsync(out.fileno())
        except OSError as exc:
            # A full disk or a vanished directory heals. Cut what this attempt wrote, so the
            # retry does not repeat the lines that did fit; reopening also drops a torn tail.
            if start is not None and self._file is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._file.truncate(start)
            self.close()
            return SendResult.retry(f"cannot write {self._path}: {exc.strerror or exc}")
        return SendResult.ok(len(events))

    def healthcheck(self) -> None:
        if self._path == "-":
            return
        directory = os.path.dirname(os.path.abspath(self._path)) or "."
        probe = directory
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.access(probe, os.W_OK):
            raise SinkError(f"{self._path}: directory {probe} is not writable")
        if os.path.exists(self._path) and not os.access(self._path, os.W_OK):
            raise SinkError(f"{self._path}: file is not writable")

    def close(self) -> None:
        if self._file is not None and self._path != "-":
            self._file.close()
        self._file = None


def _drop_torn_tail(file: IO[bytes], path: str) -> None:
    """Truncate a last line without its newline: a write cut short by a crash or a full disk.

    Its event was never acknowledged, so the pipeline sends it again; appending after the
    fragment instead would glue the next event onto it and make both unreadable."""
    end = file.seek(0, os.SEEK_END)
    if end == 0:  # a new or empty file has nothing to repair
        return
    position = end
    while position > 0:
        start = max(0, position - _TAIL_CHUNK)
        file.seek(start)
        chunk = file.read(position - start)
        if position == end and chunk.endswith(b"\n"):
            return
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            position = start + newline + 1
            break
        position = start
    file.truncate(position)
    file.flush()
    os.fsync(file.fileno())
    log.warning("removed a torn last line left by an interrupted write", path=path, bytes=end - position)
