"""FileSink: JSON Lines, one event per line, appended and fsynced per batch ("-" = stdout)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Literal

from sinks.base import Event, SendResult, SinkError
from sinks.settings import SinkSettings


class FileSinkSettings(SinkSettings):
    type: Literal["file"]
    path: str


def encode(events: Sequence[Event]) -> bytes:
    return b"".join(
        json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for event in events
    )


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
                self._file = open(self._path, "ab")  # noqa: SIM115 - kept open across batches
        return self._file

    def send(self, events: Sequence[Event]) -> SendResult:
        try:
            out = self._open()
            out.write(encode(events))
            out.flush()
            if self._path != "-":
                os.fsync(out.fileno())
        except OSError as exc:
            # A full disk or a vanished directory heals; reopen on the next attempt. A partial
            # line may have been written: readers should skip a line that does not parse.
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
