"""FileSink: JSON Lines appended and fsynced; a torn last line from a crash is repaired."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from structlog.testing import capture_logs

from sinks.file import FileSink, FileSinkSettings
from tests.conftest import ROOT


def sink(path) -> FileSink:
    return FileSink(FileSinkSettings(type="file", name="f", path=str(path)))


def test_appends_one_event_per_line(tmp_path):
    out = tmp_path / "deep" / "runs.jsonl"
    first = sink(out)
    assert first.send([{"run_id": "a"}, {"run_id": "b"}]).done == 2
    first.close()
    second = sink(out)
    assert second.send([{"run_id": "c", "text": "é\n"}]).done == 1
    second.close()
    assert [json.loads(line)["run_id"] for line in out.read_text().splitlines()] == ["a", "b", "c"]


def test_a_torn_last_line_is_removed_before_appending(tmp_path):
    out = tmp_path / "runs.jsonl"
    out.write_bytes(b'{"run_id": "a"}\n{"run_id": "b", "par')  # kill -9 in the middle of a write
    target = sink(out)
    target.send([{"run_id": "b"}, {"run_id": "c"}])  # the pipeline re-sends the unacknowledged batch
    target.close()
    assert [json.loads(line)["run_id"] for line in out.read_text().splitlines()] == ["a", "b", "c"]


@pytest.mark.parametrize("existing", [None, b"", b'{"run_id": "a"}\n'], ids=["new", "empty", "whole-lines"])
def test_a_file_with_nothing_torn_is_left_alone_without_a_repair_warning(tmp_path, existing):
    out = tmp_path / "runs.jsonl"
    if existing is not None:
        out.write_bytes(existing)
    with capture_logs() as logs:
        target = sink(out)
        target.send([{"run_id": "b"}])
        target.close()
    assert logs == []
    assert out.read_bytes() == (existing or b"") + b'{"run_id":"b"}\n'


def test_a_torn_line_is_reported_with_the_bytes_removed(tmp_path):
    out = tmp_path / "runs.jsonl"
    out.write_bytes(b'{"run_id": "a"}\n{"run_')
    with capture_logs() as logs:
        target = sink(out)
        target.send([{"run_id": "b"}])
        target.close()
    assert [(entry["event"], entry["bytes"]) for entry in logs] == [
        ("removed a torn last line left by an interrupted write", len(b'{"run_'))
    ]


def test_a_file_with_no_newline_at_all_is_cut_to_empty(tmp_path):
    out = tmp_path / "runs.jsonl"
    out.write_bytes(b'{"run_id": "x", "partial' + b"y" * 200_000)
    target = sink(out)
    target.send([{"run_id": "x"}])
    target.close()
    assert out.read_text() == '{"run_id":"x"}\n'


def test_unwritable_path_is_a_retry_not_a_loss(tmp_path):
    (tmp_path / "blocker").write_text("a file where a directory should be")
    result = sink(tmp_path / "blocker" / "runs.jsonl").send([{"run_id": "a"}])
    assert result.done == 0 and result.error and not result.fatal


def test_dash_writes_to_stdout():
    code = (
        "from sinks.file import FileSink, FileSinkSettings\n"
        "s = FileSink(FileSinkSettings(type='file', name='o', path='-'))\n"
        "s.send([{'run_id': 'r1'}, {'run_id': 'r2'}])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert [json.loads(line)["run_id"] for line in result.stdout.splitlines()] == ["r1", "r2"]
