from collections.abc import Sequence

from sinks.base import Event
from sinks.splitting import Kind, Verdict, send_splitting


def make(n: int) -> list[dict]:
    return [{"run_id": f"r{i}"} for i in range(n)]


class Backend:
    """Accepts requests of at most `limit` events; refuses any request holding a bad run_id."""

    def __init__(self, limit: int = 1000, bad: frozenset[str] = frozenset(), name_bad: bool = False):
        self.limit, self.bad, self.name_bad = limit, bad, name_bad
        self.stored: list[str] = []
        self.requests = 0

    def post(self, events: Sequence[Event]) -> Verdict:
        self.requests += 1
        if len(events) > self.limit:
            return Verdict(Kind.TOO_LARGE, "413")
        for index, event in enumerate(events):
            if event["run_id"] in self.bad:
                if self.name_bad:
                    self.stored.extend(e["run_id"] for e in events[:index])
                    return Verdict(Kind.BAD, f"bad {event['run_id']}", accepted_prefix=index, bad_index=index)
                return Verdict(Kind.BAD, "bad request")
        self.stored.extend(e["run_id"] for e in events)
        return Verdict(Kind.OK)


def test_too_large_is_split_until_it_fits():
    backend = Backend(limit=3)
    result = send_splitting(make(10), backend.post)
    assert result.done == 10 and not result.rejected
    assert backend.stored == [f"r{i}" for i in range(10)]


def test_bad_events_are_bisected_out_and_the_rest_delivered():
    backend = Backend(bad=frozenset({"r3", "r7"}))
    result = send_splitting(make(10), backend.post)
    assert result.done == 10
    assert [r.index for r in result.rejected] == [3, 7]
    assert backend.stored == [f"r{i}" for i in range(10) if i not in (3, 7)]


def test_named_bad_event_skips_bisecting():
    backend = Backend(bad=frozenset({"r2", "r5"}), name_bad=True)
    result = send_splitting(make(8), backend.post)
    assert result.done == 8
    assert [(r.index, r.reason) for r in result.rejected] == [(2, "bad r2"), (5, "bad r5")]
    assert backend.stored == ["r0", "r1", "r3", "r4", "r6", "r7"]
    assert backend.requests == 3


def test_retry_midway_reports_the_finished_prefix():
    calls = []

    def post(events: Sequence[Event]) -> Verdict:
        calls.append(len(events))
        if len(events) > 4:
            return Verdict(Kind.TOO_LARGE)
        if events[0]["run_id"] == "r4":
            return Verdict(Kind.RETRY, "503", retry_after=2.0)
        return Verdict(Kind.OK)

    result = send_splitting(make(8), post)
    assert result.done == 4 and result.error == "503" and result.retry_after == 2.0 and not result.fatal


def test_fatal_stops():
    result = send_splitting(make(3), lambda events: Verdict(Kind.FATAL, "401 bad key"))
    assert result.fatal and result.done == 0 and result.error == "401 bad key"
