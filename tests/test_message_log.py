"""The log reader's paging and budget (exporter/source/message_log.py), against an in-memory log."""

from __future__ import annotations

from typing import Any

from exporter.config import DiagnoseSettings
from exporter.source.duvo_client import DuvoNotFound, DuvoUnavailable
from exporter.source.message_log import Diagnoser, _sampled
from tests.test_diagnosis import TIMEOUT, call


class Log:
    def __init__(self, messages: list[Any], *, with_total: bool = True, fail_at: set[int] | None = None) -> None:
        self.messages, self.with_total, self.fail_at = messages, with_total, fail_at or set()
        self.calls: list[tuple[int, int]] = []

    def list_messages(self, run_id: str, *, offset: int = 0, limit: int = 100, keep_malformed: bool = False):
        self.calls.append((offset, limit))
        if offset in self.fail_at:
            raise DuvoUnavailable("HTTP 503")
        if run_id == "gone":
            raise DuvoNotFound("404")
        return self.messages[offset : offset + limit], len(self.messages) if self.with_total else None


RUN = {"id": "r", "status": "failed"}


def log_of(n: int) -> list[Any]:
    return [call(k % 60, "browser.open") for k in range(n - 1)] + [call(59, "pdf.extract", TIMEOUT)]


def test_a_short_log_is_one_request_and_a_long_one_reads_its_last_page_next():
    source = Log(log_of(80))
    assert Diagnoser(source, DiagnoseSettings(), budget=10).diagnose(RUN)["state"] == "complete"
    assert source.calls == [(0, 100)]
    source = Log(log_of(350))
    got = Diagnoser(source, DiagnoseSettings(), budget=10).diagnose(RUN)
    assert source.calls == [(0, 100), (250, 100)]
    assert got["state"] == "partial" and got["failure"]["step"] == 349 and got["steps"]["count"] == 350


def test_enough_pages_meet_the_first_and_read_it_all():
    source = Log(log_of(250))
    got = Diagnoser(source, DiagnoseSettings(max_pages=3), budget=10).diagnose(RUN)
    assert source.calls == [(0, 100), (150, 100), (100, 50)]
    assert got["state"] == "complete" and got["failure"]["step"] == 249


def test_without_a_total_a_full_page_is_partial():
    assert Diagnoser(Log(log_of(30), with_total=False), DiagnoseSettings(), budget=5).diagnose(RUN)["state"] == (
        "complete"
    )
    assert Diagnoser(Log(log_of(130), with_total=False), DiagnoseSettings(), budget=5).diagnose(RUN)["state"] == (
        "partial"
    )


def test_the_budget_is_per_pass_and_a_failure_ends_reading_for_the_pass():
    source = Log(log_of(10))
    diagnoser = Diagnoser(source, DiagnoseSettings(), budget=1)
    assert diagnoser.diagnose(RUN) is not None
    assert diagnoser.diagnose(RUN) is None  # no request left: the caller holds the Job
    diagnoser.new_pass()
    assert diagnoser.diagnose(RUN)["state"] == "complete"
    failing = Diagnoser(Log(log_of(10), fail_at={0}), DiagnoseSettings(), budget=5)
    assert failing.diagnose(RUN)["state"] == "unavailable"
    assert failing.diagnose(RUN)["state"] == "unavailable" and failing.requests == 1  # no second request
    assert Diagnoser(Log([]), DiagnoseSettings(), budget=5).diagnose({"id": "gone", "status": "failed"})["state"] == (
        "unavailable"
    )


def test_a_tail_that_fails_leaves_the_first_page():
    got = Diagnoser(Log(log_of(350), fail_at={250}), DiagnoseSettings(), budget=5).diagnose(RUN)
    assert got["state"] == "partial" and got["failure"] is None


def test_selection():
    diagnoser = Diagnoser(Log([]), DiagnoseSettings(completed_sample=0.5), budget=5)
    assert diagnoser.selects({"id": "a", "status": "failed"})
    assert not diagnoser.selects({"id": "a", "status": "running"})
    picked = sum(diagnoser.selects({"id": f"r{k}", "status": "completed"}) for k in range(1000))
    assert 400 < picked < 600 and _sampled("r1", 0.5) == _sampled("r1", 0.5)
    assert not Diagnoser(Log([]), DiagnoseSettings(), budget=0).selects({"id": "a", "status": "failed"})


def test_time_per_pass_is_bounded_from_the_first_log_read():
    now = [100.0]
    diagnoser = Diagnoser(Log(log_of(10)), DiagnoseSettings(), budget=50, seconds=5.0, clock=lambda: now[0])
    assert diagnoser.diagnose(RUN) is not None  # starts the clock
    now[0] += 4.9
    assert diagnoser.diagnose(RUN) is not None
    now[0] += 0.2
    assert diagnoser.diagnose(RUN) is None  # out of time: held for the next pass
    diagnoser.new_pass()
    assert diagnoser.diagnose(RUN) is not None
