"""The embedded Duvo API simulator, exercised over real HTTP as the exporter will use it."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import requests

from exporter.simulator import TERMINAL_STATUSES, ManualClock, Simulator, SimulatorOptions, World

KEY = {"Authorization": "Bearer dv_sim_key"}
T0 = datetime(2026, 5, 17, 10, 0, 0, tzinfo=UTC)
TEAM = "team-sim"


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Simulator]]:
    started: list[Simulator] = []

    def make(clock: ManualClock | None = None, **options: Any) -> Simulator:
        options.setdefault("jobs_per_second", 0.0)
        simulator = Simulator(SimulatorOptions(**options), clock=clock or ManualClock(T0)).start()
        started.append(simulator)
        return simulator

    yield make
    for simulator in started:
        simulator.stop()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def runs(http: requests.Session, sim: Simulator, team: str = TEAM, **params: Any) -> requests.Response:
    return http.get(f"{sim.url}/teams/{team}/runs", headers=KEY, params=params, timeout=10)


def page_all(http: requests.Session, sim: Simulator, limit: int = 100, **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        body = runs(http, sim, limit=limit, offset=len(rows), **params).json()
        rows.extend(body["data"])
        if not body["data"] or len(rows) >= body["total"]:
            return rows


# -- listing ----------------------------------------------------------------------------------


def test_pagination_offset_limit_total(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim(backfill=250)
    truth = [job["id"] for job in sim.world.jobs(TEAM)]
    first = runs(http, sim).json()
    assert first["total"] == 250 and len(first["data"]) == 20  # default limit
    assert [row["id"] for row in first["data"]] == truth[::-1][:20]  # default order: newest first
    assert [row["id"] for row in page_all(http, sim, sort_order="asc")] == truth
    last = runs(http, sim, limit=100, offset=200).json()
    assert len(last["data"]) == 50 and last["total"] == 250
    assert runs(http, sim, offset=250).json() == {"data": [], "total": 250}
    assert len(runs(http, sim, limit=500).json()["data"]) == 100  # clamped to the documented maximum
    for bad in ({"limit": "ten"}, {"limit": 0}, {"offset": -1}, {"sort_order": "up"}, {"sort_by": "id"}):
        reply = runs(http, sim, **bad)
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_request"


def test_sort_orders_and_ties_broken_by_id(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim(timestamp_style="seconds", backfill=300, backfill_window_seconds=60)
    moment = T0 - timedelta(seconds=30)
    tied = {sim.world.create_job(TEAM, status="completed", created_at=moment)["id"] for _ in range(6)}
    ascending = page_all(http, sim, sort_order="asc")
    keys = [(parse(row["created_at"]), row["id"]) for row in ascending]
    assert keys == sorted(keys) and len(set(keys)) == len(keys) == 306
    assert [row["id"] for row in ascending if row["id"] in tied] == sorted(tied)
    descending = page_all(http, sim, sort_order="desc")
    assert [row["id"] for row in descending] == [row["id"] for row in reversed(ascending)]


@pytest.mark.parametrize(
    ("mode", "at_t0", "at_t0_700"),
    [("inclusive", 3, 1), ("exclusive", 2, 1), ("seconds", 3, 3), ("exclusive_seconds", 1, 1)],
)
def test_since_modes(
    make_sim: Callable[..., Simulator], http: requests.Session, mode: str, at_t0: int, at_t0_700: int
) -> None:
    sim = make_sim(since_mode=mode, clock=ManualClock(T0 + timedelta(minutes=5)))
    for offset in (-1.0, 0.0, 0.5, 1.0):
        sim.world.create_job(TEAM, status="completed", created_at=T0 + timedelta(seconds=offset))
    assert runs(http, sim, since="2026-05-17T10:00:00Z").json()["total"] == at_t0
    assert runs(http, sim, since="2026-05-17T10:00:00.000+00:00").json()["total"] == at_t0
    assert runs(http, sim, since="2026-05-17T12:00:00+02:00").json()["total"] == at_t0
    assert runs(http, sim, since="2026-05-17T10:00:00.700Z").json()["total"] == at_t0_700
    assert runs(http, sim, since="yesterday").status_code == 400


def test_filters(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim()
    world = sim.world
    agent_a, agent_b = world.agents(TEAM)[:2]
    world.create_job(TEAM, status="running", agent_id=agent_a)
    world.create_job(TEAM, status="failed", agent_id=agent_a, issue_severity="critical")
    world.create_job(TEAM, status="completed", agent_id=agent_b, has_issues=True, issue_severity="low")
    world.create_job(TEAM, status="completed", agent_id=agent_b, created_at=T0 - timedelta(hours=2))
    assert runs(http, sim, agent_id=agent_a).json()["total"] == 2
    assert runs(http, sim, agent_id="nobody").json() == {"data": [], "total": 0}
    assert runs(http, sim, status="completed").json()["total"] == 2
    assert runs(http, sim, status="completed", since="2026-05-17T09:00:00Z").json()["total"] == 1
    assert runs(http, sim, has_issues="true").json()["total"] == 2
    assert runs(http, sim, has_issues="false").json()["total"] == 2
    critical = runs(http, sim, has_issues="true", issue_severity="critical").json()
    assert critical["total"] == 1 and critical["data"][0]["status"] == "failed"
    page = runs(http, sim, agent_id=agent_b, limit=1, offset=1, sort_order="asc").json()
    assert page["total"] == 2 and len(page["data"]) == 1 and page["data"][0]["has_issues"] is True
    for bad in ({"status": "done"}, {"issue_severity": "high"}, {"has_issues": "yes"}):
        assert runs(http, sim, **bad).status_code == 400


def test_records_carry_all_fields_and_unknown_ones(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim(backfill=20)
    sim.world.create_job(TEAM, status="completed", region="eu-west")
    rows = runs(http, sim, limit=100).json()["data"]
    expected = {"id", "team_id", "agent_id", "status", "created_at", "started_at", "completed_at"}
    expected |= {"pending_human_request", "has_issues", "issue_severity", "trigger"}
    assert all(expected <= set(row) for row in rows)
    assert rows[0]["region"] == "eu-west" and rows[0]["trigger"] == "manual"


@pytest.mark.parametrize(
    ("style", "pattern"),
    [("z_millis", r"\.\d{3}Z$"), ("offset", r"\.\d{6}\+00:00$"), ("seconds", r":\d{2}Z$")],
)
def test_timestamp_styles(make_sim: Callable[..., Simulator], http: requests.Session, style: str, pattern: str) -> None:
    sim = make_sim(backfill=30, timestamp_style=style)
    for row in runs(http, sim, limit=30).json()["data"]:
        assert re.search(pattern, row["created_at"]), row["created_at"]
        parse(row["created_at"])


def test_mixed_timestamps_vary_and_parse(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim(backfill=60, timestamp_style="mixed")
    stamps = [row["created_at"] for row in runs(http, sim, limit=60).json()["data"]]
    assert {stamp[-1] for stamp in stamps} == {"Z", "0"}  # both Z and +00:00 appear
    assert {len(stamp) for stamp in stamps} >= {20, 24, 27, 32}
    assert all(parse(stamp).tzinfo is not None for stamp in stamps)


def test_same_seed_same_world() -> None:
    options = {"backfill": 50, "seed": 7, "timestamp_style": "mixed", "jobs_per_second": 3.0}
    first, second = (World(SimulatorOptions(**options), clock=ManualClock(T0)) for _ in range(2))
    assert first.jobs() == second.jobs()
    assert World(SimulatorOptions(**{**options, "seed": 8}), clock=ManualClock(T0)).jobs() != first.jobs()


# -- errors -----------------------------------------------------------------------------------


def test_auth_and_not_found(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim(teams=["team-a", "team-b"], api_keys={"dv_sim_key": None, "dv_only_a": ["team-a"]}, backfill=3)
    url = f"{sim.url}/teams/team-a/runs"
    for headers in ({}, {"Authorization": "Bearer dv_wrong"}, {"Authorization": "Basic dv_sim_key"}):
        reply = http.get(url, headers=headers)
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "unauthorized"
    only_a = {"Authorization": "Bearer dv_only_a"}
    assert http.get(url, headers=only_a).status_code == 200
    forbidden = http.get(f"{sim.url}/teams/team-b/runs", headers=only_a)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
    run_b = sim.world.jobs("team-b")[0]["id"]
    assert http.get(f"{sim.url}/runs/{run_b}", headers=only_a).status_code == 403
    assert http.get(f"{sim.url}/runs/{run_b}", headers=KEY).json()["run"]["id"] == run_b
    assert http.get(f"{sim.url}/teams/team-x/runs", headers=KEY).status_code == 404
    for missing in ("5d0f5a3e-0000-4000-8000-000000000000", "not-a-uuid"):
        reply = http.get(f"{sim.url}/runs/{missing}", headers=KEY)
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found"
    assert sim.world.delete(run_b)
    assert http.get(f"{sim.url}/runs/{run_b}", headers=KEY).status_code == 404
    assert http.get(f"{sim.url}/runs/{run_b}/messages", headers=KEY).status_code == 404
    assert http.get(f"{sim.url}/nothing", headers=KEY).status_code == 404


def test_rate_limit_seconds_and_http_date(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim(requests_per_minute=3, api_keys={"dv_sim_key": None, "dv_other": None})
    assert [runs(http, sim).status_code for _ in range(3)] == [200] * 3
    limited = runs(http, sim)
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    other = http.get(f"{sim.url}/teams/{TEAM}/runs", headers={"Authorization": "Bearer dv_other"})
    assert other.status_code == 200  # the budget is per key
    http.post(f"{sim.control_url}/config", json={"retry_after_format": "http-date"})
    limited = runs(http, sim)
    retry_at = parsedate_to_datetime(limited.headers["Retry-After"])
    assert limited.status_code == 429 and limited.headers["Retry-After"].endswith("GMT")
    assert timedelta(0) < retry_at - datetime.now(UTC) <= timedelta(seconds=62)
    assert sim.stats()["rate_limited"] == 2
    http.post(f"{sim.control_url}/config", json={"requests_per_minute": None})
    assert runs(http, sim).status_code == 200


# -- lifecycle --------------------------------------------------------------------------------


def test_lifecycle_progresses_with_the_clock(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    clock = ManualClock(T0)
    sim = make_sim(clock=clock, jobs_per_second=2.0, late_fraction=0.0)
    clock.advance(10)
    first = runs(http, sim, limit=100).json()["data"]
    assert first and any(row["status"] not in TERMINAL_STATUSES for row in first)
    assert all(row["completed_at"] is None for row in first if row["status"] not in TERMINAL_STATUSES)
    clock.advance(60)
    for row in first:
        later = http.get(f"{sim.url}/runs/{row['id']}", headers=KEY).json()["run"]
        assert later["status"] in TERMINAL_STATUSES and later["completed_at"] is not None
        assert later["created_at"] == row["created_at"]
        if later["started_at"] is not None:
            assert parse(later["created_at"]) <= parse(later["started_at"]) <= parse(later["completed_at"])
    assert runs(http, sim).json()["total"] > len(first)  # generation went on meanwhile


def test_time_scale_shortens_lifecycles_not_creation(make_sim: Callable[..., Simulator]) -> None:
    clock = ManualClock(T0)
    sim = make_sim(clock=clock, jobs_per_second=1.0, late_fraction=1.0, time_scale=60.0)
    clock.advance(5)
    jobs = sim.world.jobs(TEAM)
    assert jobs and all(parse(job["created_at"]) <= clock.now for job in jobs)
    clock.advance(4 * 60 + 30)  # 4 simulated hours (the longest late Job) at 60x
    assert {job["id"] for job in jobs} <= sim.world.terminal_ids()


def test_late_fraction_and_waiting(make_sim: Callable[..., Simulator]) -> None:
    sim = make_sim(backfill=3000, late_fraction=0.2, backfill_window_seconds=7 * 86_400)
    jobs = sim.world.jobs(TEAM)
    now = sim.world.now()

    def lasted(job: dict[str, Any]) -> float:
        end = parse(job["completed_at"]) if job["completed_at"] else now
        return (end - parse(job["created_at"])).total_seconds()

    late = sum(lasted(job) > 100 for job in jobs) / len(jobs)
    assert 0.16 < late < 0.24
    assert sum(job["status"] in TERMINAL_STATUSES for job in jobs) > 0.9 * len(jobs)
    assert any(job["status"] not in TERMINAL_STATUSES for job in jobs)  # some still open
    waiting = [job for job in jobs if job["status"] == "waiting"]
    assert waiting and all(set(job["pending_human_request"]) >= {"id", "question", "requested_at"} for job in waiting)
    assert all(job["pending_human_request"] is None for job in jobs if job["status"] != "waiting")
    stopped_unstarted = [job for job in jobs if job["status"] == "stopped" and job["started_at"] is None]
    assert stopped_unstarted  # clients must cope with a terminal Job that never started


def test_manual_control_in_process(make_sim: Callable[..., Simulator]) -> None:
    clock = ManualClock(T0)
    world = make_sim(clock=clock).world
    job = world.create_job(TEAM, status="pending")
    assert job["started_at"] is None and job["status"] == "pending"
    clock.advance(1)
    running = world.set_status(job["id"], "running")
    assert running["started_at"] is not None and running["completed_at"] is None
    waiting = world.set_status(job["id"], "waiting")
    assert waiting["pending_human_request"]["question"]
    custom = world.set_status(job["id"], "waiting", {"id": "h1", "question": "ok?", "requested_at": None})
    assert custom["pending_human_request"]["id"] == "h1"
    clock.advance(1)
    done = world.set_status(job["id"], "completed")
    assert done["completed_at"] is not None and done["pending_human_request"] is None
    assert job["id"] in world.terminal_ids()
    with pytest.raises(ValueError):
        world.set_status(job["id"], "finished")
    with pytest.raises(KeyError):
        world.set_status("5d0f5a3e-0000-4000-8000-000000000000", "completed")


def test_overriding_a_generated_job(make_sim: Callable[..., Simulator]) -> None:
    clock = ManualClock(T0)
    sim = make_sim(clock=clock, jobs_per_second=1.0, late_fraction=1.0)
    clock.advance(5)
    job = sim.world.jobs(TEAM)[0]
    stopped = sim.world.set_status(job["id"], "stopped")
    assert stopped["status"] == "stopped" and stopped["completed_at"] is not None
    clock.advance(5 * 3600)
    assert sim.world.get_run(job["id"])["status"] == "stopped"  # the lifecycle no longer applies
    counts = sim.world.counts()
    assert counts["terminal"] == len(sim.world.terminal_ids())


# -- messages ---------------------------------------------------------------------------------


def test_messages_pagination_and_content(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim(backfill=400)
    world = sim.world
    jobs = world.jobs(TEAM)
    long_id = next(job["id"] for job in jobs if world.messages(job["id"], limit=1)[1] > 100)
    full, total = world.messages(long_id, limit=1000)
    pages: list[dict[str, Any]] = []
    while len(pages) < total:
        reply = http.get(f"{sim.url}/runs/{long_id}/messages", headers=KEY, params={"limit": 100, "offset": len(pages)})
        body = reply.json()
        assert body["total"] == total and len(body["messages"]) <= 100
        pages.extend(body["messages"])
    assert pages == full
    small = http.get(f"{sim.url}/runs/{long_id}/messages", headers=KEY, params={"limit": 2, "offset": 3}).json()
    assert small["messages"] == full[3:5]
    stamps = [parse(message["timestamp"]) for message in full]
    assert stamps == sorted(stamps)
    assert all({"type", "role", "timestamp"} <= set(message) for message in full)
    failed = next(job for job in jobs if job["status"] == "failed")
    log = http.get(f"{sim.url}/runs/{failed['id']}/messages", headers=KEY, params={"limit": 100}).json()
    assert "error" in log["messages"][-1]["tool_result"]
    waiting = world.create_job(TEAM, status="waiting")
    log = world.messages(waiting["id"], limit=100)[0]
    assert any(message["type"] == "human_request" for message in log)


# -- writes -----------------------------------------------------------------------------------


def test_post_run(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim()
    agent = sim.world.agents(TEAM)[0]
    reply = http.post(
        f"{sim.url}/teams/{TEAM}/runs", headers=KEY, json={"agent_id": agent, "webhook_url": "https://x.test/h"}
    )
    assert reply.status_code == 201
    body = reply.json()
    assert body["run_id"] == body["run"]["id"] and body["run"]["status"] == "pending"
    assert http.get(f"{sim.url}/runs/{body['run_id']}", headers=KEY).json()["run"]["agent_id"] == agent
    assert http.post(f"{sim.url}/teams/{TEAM}/runs", headers=KEY, json={}).status_code == 400
    assert http.post(f"{sim.url}/teams/{TEAM}/runs", headers=KEY, data="{").status_code == 400


# -- faults -----------------------------------------------------------------------------------


def test_error_rate_and_slow(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim()
    sim.faults.update(error_rate=1.0)
    reply = runs(http, sim)
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "service_unavailable"
    sim.faults.update(error_status=500)
    assert runs(http, sim).status_code == 500
    assert http.get(f"{sim.control_url}/stats").status_code == 200  # the control API is never faulted
    sim.faults.update(error_rate=0.5, error_status=503)
    codes = [runs(http, sim).status_code for _ in range(40)]
    assert 5 < codes.count(503) < 35 and codes.count(200) + codes.count(503) == 40
    sim.faults.update(error_rate=0.0, slow_seconds=0.3)
    started = time.monotonic()
    assert runs(http, sim).status_code == 200
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("kind", ["not_json", "truncated", "missing_keys"])
def test_malformed_bodies(make_sim: Callable[..., Simulator], http: requests.Session, kind: str) -> None:
    sim = make_sim(backfill=5)
    sim.faults.update(malformed_rate=1.0, malformed_kinds=[kind])
    for _ in range(4):
        reply = runs(http, sim)
        assert reply.status_code == 200
        if kind == "missing_keys":
            body = reply.json()
            assert "data" not in body or "total" not in body
        else:
            with pytest.raises(ValueError):
                reply.json()
    assert sim.stats()["events"][f"malformed_{kind}"] == 4


def test_connection_reset(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim()
    sim.faults.update(reset_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        runs(http, sim)
    sim.faults.update(reset_rate=0.0)
    assert runs(http, sim).status_code == 200
    assert sim.stats()["resets"] == 1


def test_inserts_during_paging_shift_desc_pages(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim(backfill=50)
    sim.faults.update(insert_during_paging=3)
    first = runs(http, sim, limit=10).json()
    second = runs(http, sim, limit=10, offset=10).json()
    assert first["total"] == 50 and second["total"] == 53
    assert [row["id"] for row in second["data"][:3]] == [row["id"] for row in first["data"][7:]]


def test_short_pages_keep_total_and_order(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim(backfill=100)
    sim.faults.update(short_pages=True)
    page = runs(http, sim, limit=10).json()
    assert 1 <= len(page["data"]) < 10 and page["total"] == 100
    assert [row["id"] for row in page_all(http, sim, limit=10)] == [job["id"] for job in sim.world.jobs(TEAM)][::-1]


def test_total_jitter(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim(backfill=40)
    sim.faults.update(total_jitter=3)
    totals = [runs(http, sim).json()["total"] for _ in range(20)]
    assert any(total != 40 for total in totals) and all(abs(total - 40) <= 3 for total in totals)


def test_burst_429(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim()
    http.post(f"{sim.control_url}/faults", json={"burst_429": 2})
    replies = [runs(http, sim) for _ in range(3)]
    assert [reply.status_code for reply in replies] == [429, 429, 200]
    assert replies[0].headers["Retry-After"] == "1"
    assert sim.stats()["rate_limited"] == 2


# -- control API ------------------------------------------------------------------------------


def test_control_api_round_trip(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim(backfill=2)
    control = sim.control_url
    created = http.post(f"{control}/jobs", json={"team_id": TEAM, "status": "running", "source": "t"})
    assert created.status_code == 201
    job = created.json()
    assert http.get(f"{sim.url}/runs/{job['id']}", headers=KEY).json()["run"] == job
    done = http.post(f"{control}/jobs/{job['id']}/status", json={"status": "failed"}).json()
    assert done["status"] == "failed" and done["completed_at"] is not None
    truth = http.get(f"{control}/jobs", params={"team_id": TEAM}).json()
    assert truth["total"] == 3 and done in truth["jobs"]
    stats = http.get(f"{control}/stats").json()
    assert stats["jobs_total"] == 3 and stats["requests"]["get_run"] == {"200": 1}
    assert http.delete(f"{control}/jobs/{job['id']}").json() == {"deleted": True}
    assert http.delete(f"{control}/jobs/{job['id']}").status_code == 404
    assert http.get(f"{sim.url}/runs/{job['id']}", headers=KEY).status_code == 404
    assert http.post(f"{control}/reset_stats").json() == {"ok": True}
    assert http.get(f"{control}/stats").json()["requests_total"] == 0
    current = http.post(f"{control}/faults", json={}).json()
    assert current["error_rate"] == 0.0 and current["error_status"] == 503
    assert http.post(f"{control}/faults", json={"nonsense": 1}).status_code == 400
    assert http.post(f"{control}/faults", json={"error_rate": 2}).status_code == 400
    assert http.post(f"{control}/jobs", json={"team_id": TEAM, "status": "odd"}).status_code == 400
    assert http.post(f"{control}/jobs/nope/status", json={"status": "failed"}).status_code == 404
    assert http.post(f"{control}/jobs/{truth['jobs'][0]['id']}/status", json={}).status_code == 400
    assert http.post(f"{control}/config", json={"jobs_per_second": 2}).json()["jobs_per_second"] == 2.0


def test_stop_ends_keep_alive_connections(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    sim = make_sim()
    assert runs(http, sim).status_code == 200
    sim.stop()
    with pytest.raises(requests.ConnectionError):
        runs(http, sim)


def test_only_loopback() -> None:
    with pytest.raises(ValueError):
        Simulator(host="0.0.0.0")


# -- scale ------------------------------------------------------------------------------------


def test_hundred_thousand_jobs(make_sim: Callable[..., Simulator], http: requests.Session) -> None:
    clock = ManualClock(T0)
    sim = make_sim(clock=clock, backfill=100_000, backfill_window_seconds=100_000)
    newest = runs(http, sim, limit=100).json()
    assert newest["total"] == 100_000 and len(newest["data"]) == 100
    since = "2026-05-17T09:00:00Z"
    window = runs(http, sim, since=since, limit=100, sort_order="asc").json()
    assert 3000 < window["total"] < 4200  # one Job per second on average
    boundary = runs(http, sim, limit=2, offset=100_000 - window["total"] - 1, sort_order="asc").json()["data"]
    assert parse(boundary[0]["created_at"]) < parse(since) <= parse(boundary[1]["created_at"])
    assert boundary[1] == window["data"][0]
    deep = runs(http, sim, limit=100, offset=99_950).json()
    assert len(deep["data"]) == 50
    assert runs(http, sim, status="waiting").json()["total"] > 0  # O(n) filters still work at this size
    sim.world.set_jobs_per_second(50.0)
    clock.advance(20)
    assert 100_500 < sim.stats()["jobs_total"] < 101_500
