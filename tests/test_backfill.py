"""`backfill`: a past window reaches exactly its target sink, resumes without gaps or repeats."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli, cli_in_process, exported, write_config
from transport import timestamps

TWO_SINKS = """\
- type: file
  name: a
  path: {tmp}/a.jsonl
  batch: {{flush_interval: 0}}
- type: file
  name: b
  path: {tmp}/b.jsonl
  batch: {{flush_interval: 0}}
"""

OUTCOMES = ("completed", "failed", "stopped", "interrupted")


def _config(tmp_path: Path, sim_url: str, **duvo: object) -> str:
    return str(write_config(tmp_path, sim_url, sinks=TWO_SINKS.format(tmp=tmp_path), **duvo))


def _at(days_ago: float, base: datetime) -> str:
    return timestamps.format_utc(base - timedelta(days=days_ago))


def _old_jobs(sim, base: datetime, count: int, *, first_day: float = 3.9, span_days: float = 1.8) -> set[str]:
    """``count`` finished Jobs spread over [base - first_day, base - first_day + span_days], some
    sharing a created_at (a page boundary can fall between them). Returns their ids."""
    ids = set()
    for n in range(count):
        created = _at(first_day - span_days * (n // 2) / max(1, count // 2), base)  # pairs share a time
        job = sim.world.create_job(team_id="team-sim", status=OUTCOMES[n % 4], created_at=created)
        ids.add(job["id"])
    return ids


def _checkpoints(config: str) -> dict[str, str]:
    return json.loads(cli_in_process("status", "--json", "--config", config).stdout)["checkpoints"]


def test_backfill_sends_exactly_the_window_to_its_sink_and_leaves_the_live_checkpoint(sim, tmp_path):
    base = datetime.now(UTC)
    recent = {sim.world.create_job(team_id="team-sim", status="completed")["id"] for _ in range(3)}
    config = _config(tmp_path, sim.url, page_size=7)
    assert cli_in_process("once", "--config", config).returncode == 0
    assert set(exported(tmp_path / "a.jsonl")) == recent == set(exported(tmp_path / "b.jsonl"))
    checkpoint = _checkpoints(config)

    # Jobs created long before the checkpoint: the live pipeline never lists them again.
    in_window = _old_jobs(sim, base, 30)
    open_in_window = {
        sim.world.create_job(team_id="team-sim", status=s, created_at=_at(3, base))["id"]
        for s in ("running", "waiting")
    }
    before = {sim.world.create_job(team_id="team-sim", status="completed", created_at=_at(4.5, base))["id"]}
    after = {sim.world.create_job(team_id="team-sim", status="failed", created_at=_at(1.5, base))["id"]}
    since, until = _at(4, base), _at(2, base)

    result = cli("backfill", "--since", since, "--until", until, "--sink", "a", "--config", config)
    assert result.returncode == 0, result.stderr
    assert "30 event(s) enqueued" in result.stdout
    a, b = exported(tmp_path / "a.jsonl"), exported(tmp_path / "b.jsonl")
    assert set(a) == recent | in_window and set(a.values()) == {1}
    assert not (open_in_window | before | after) & set(a)
    assert set(b) == recent  # only the target sink
    assert _checkpoints(config) == checkpoint  # the live checkpoint never moves

    # The same command again finds the finished backfill: nothing listed, nothing sent twice.
    again = cli("backfill", "--since", since, "--until", until, "--sink", "a", "--config", config)
    assert again.returncode == 0, again.stderr
    assert "0 event(s) enqueued" in again.stdout
    assert exported(tmp_path / "a.jsonl") == a

    # A following `once` does not re-export the window, and b still never saw it.
    assert cli_in_process("once", "--config", config).returncode == 0
    assert exported(tmp_path / "a.jsonl") == a and set(exported(tmp_path / "b.jsonl")) == recent

    # Without --sink every sink gets the window (a new name: a new backfill).
    every = cli("backfill", "--since", since, "--until", until, "--config", config)
    assert every.returncode == 0, every.stderr
    assert set(exported(tmp_path / "b.jsonl")) == recent | in_window
    assert _checkpoints(config) == checkpoint


def _poll(deadline: float, check, message: str):
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(message)


def _backfill_events(state: Path) -> int:
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT coalesce(sum(events), 0) FROM backfills").fetchone()
    except sqlite3.OperationalError:
        return 0  # the schema is being created
    return row[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_interrupted_backfill_resumes_without_gaps_or_repeats(sim, tmp_path, sig):
    base = datetime.now(UTC)
    jobs = _old_jobs(sim, base, 80)
    # 5 Jobs per page at 120 requests/min: about 8 s to list, so it is stopped part-way.
    config = _config(tmp_path, sim.url, page_size=5, requests_per_minute=120)
    since, until = _at(4, base), _at(2, base)
    args = ["backfill", "--since", since, "--until", until, "--config", config]
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _poll(time.monotonic() + 60, lambda: _backfill_events(tmp_path / "state.db") >= 15, "no page committed")
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    done_before = _backfill_events(tmp_path / "state.db")
    assert 15 <= done_before < len(jobs), "the backfill was not stopped part-way"
    if sig == signal.SIGTERM:
        assert process.returncode == 130, stderr
        assert f"duvo-exporter backfill --since {since} --until {until}" in stderr
        # A graceful stop delivers nothing more but keeps every committed page.
    else:
        assert process.returncode == -signal.SIGKILL

    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(jobs) - done_before} event(s) enqueued by this run" in resumed.stdout
    for sink in ("a", "b"):
        counts = exported(tmp_path / f"{sink}.jsonl")
        assert set(counts) == jobs, f"{sink}: gaps {len(jobs - set(counts))}"
        assert set(counts.values()) == {1}, f"{sink}: repeats"


def test_backfill_command_line_errors_are_one_line_exit_2(sim, tmp_path):
    config = _config(tmp_path, sim.url)
    cases = [
        (["--since", "yesterday"], "--since: 'yesterday' is not a time"),
        (["--since", "2d", "--until", "3d"], "must be after --since"),
        (["--since", "2d", "--sink", "nope"], "--sink: no sink named 'nope'"),
    ]
    for extra, message in cases:
        result = cli("backfill", *extra, "--config", config)
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("duvo-exporter: error:")]
        assert len(errors) == 1 and message in errors[0], result.stderr
    assert not (tmp_path / "state.db").exists()


def test_backfill_refuses_to_run_beside_a_writer(sim, tmp_path):
    from exporter.state.lock import StateLock

    config = _config(tmp_path, sim.url)
    assert cli_in_process("once", "--config", config).returncode == 0
    with StateLock(str(tmp_path / "state.db"), "run"):
        result = cli("backfill", "--since", "1d", "--config", config)
    assert result.returncode == 3
    assert "is in use by another duvo-exporter" in result.stderr


def test_relative_times_parse_from_now():
    from exporter.moments import parse_moment

    now = datetime(2026, 11, 2, 12, tzinfo=UTC)
    assert parse_moment("24h", now) == datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert parse_moment("7d", now) == datetime(2026, 10, 26, 12, tzinfo=UTC)
    assert parse_moment("2026-11-01T00:00:00Z", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_moment("2026-11-01T01:00:00+01:00", now) == datetime(2026, 11, 1, tzinfo=UTC)
    for bad in ("", "tomorrow", "-3h", "2026-13-01T00:00:00Z"):
        with pytest.raises(ValueError, match="RFC 3339"):
            parse_moment(bad, now)


def test_progress_is_a_bar_on_a_terminal_and_log_lines_otherwise(sim, tmp_path):
    import errno
    import os
    import pty

    base = datetime.now(UTC)
    _old_jobs(sim, base, 12)
    config = _config(tmp_path, sim.url, page_size=5)
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "backfill", "--since", _at(4, base), "--until", _at(2, base), "-c", config],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
        cwd=ROOT,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "200"},
    )
    os.close(follower)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError as exc:  # EIO once the child is gone
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    stdout, _ = process.communicate(timeout=60)
    screen = b"".join(chunks).decode(errors="replace")
    assert process.returncode == 0, screen
    assert "━" in screen and "100%" in screen and "12 event(s)" in screen
    assert "12 event(s) enqueued" in stdout.decode()

    piped = cli("backfill", "--since", _at(4, base), "--until", _at(2, base), "--restart", "--config", config)
    assert piped.returncode == 0, piped.stderr
    assert "━" not in piped.stderr
    lines = [json.loads(line) for line in piped.stderr.splitlines() if line.startswith("{")]
    progress = [line for line in lines if line["event"] == "backfill progress"]
    assert progress and progress[-1]["events"] == 12


def test_a_resume_at_a_created_at_shared_across_pages_has_no_gap_or_repeat(sim, tmp_path):
    """Stopped right after a page that ends inside a group of Jobs created at the same instant:
    the resume skips exactly the ones already exported."""
    import threading

    from exporter.config import load_config
    from exporter.pipeline import build_client
    from exporter.source.backfill import WindowLister, backfill_name
    from exporter.state.store import StateStore

    base = datetime.now(UTC)
    same = _at(3, base)
    ids = [sim.world.create_job(team_id="team-sim", status="completed", created_at=same)["id"] for _ in range(7)]
    ids += [sim.world.create_job(team_id="team-sim", status="failed", created_at=_at(2.5, base))["id"]]
    config = load_config(_config(tmp_path, sim.url, page_size=3))
    since, until = _at(4, base), _at(2, base)
    name = backfill_name("team-sim", since, until, None)
    client = build_client(config)
    try:
        with StateStore(config.state.path) as store:
            stop = threading.Event()
            for _ in range(10):
                record = store.start_backfill(name, "team-sim", since, until, None)
                if record.finished_at is not None:
                    break
                lister = WindowLister(client, store, record, until, config, on_progress=lambda _: stop.set())
                stop.clear()
                assert lister.run(stop) in ("stop", "done")
                assert lister.events <= 3  # one page at most per run: every run stops inside the group
            enqueued = [row[0] for row in store._conn.execute("SELECT run_id FROM outbox ORDER BY seq")]
            assert store.checkpoint("team-sim") is None  # the live checkpoint was never written
    finally:
        client.close()
    assert sorted(enqueued) == sorted(ids)  # each once: no gap, no repeat


def test_a_backfill_larger_than_the_outbox_bound_delivers_as_it_goes(sim, tmp_path):
    base = datetime.now(UTC)
    jobs = _old_jobs(sim, base, 260)
    config_path = Path(_config(tmp_path, sim.url, page_size=50))
    text = config_path.read_text()
    state_line = f"  path: {tmp_path / 'state.db'}\n"
    config_path.write_text(text.replace(state_line, state_line + "  max_outbox_events: 100\n"))
    config = str(config_path)
    since, until = _at(4, base), _at(2, base)

    result = cli("backfill", "--since", since, "--until", until, "--sink", "a", "--config", config)
    assert result.returncode == 0, result.stderr
    assert "outbox is full; delivering before the backfill goes on" in result.stderr
    assert exported(tmp_path / "a.jsonl") == dict.fromkeys(jobs, 1)
    assert not exported(tmp_path / "b.jsonl")  # b skipped a's rows to let the outbox be pruned

    # A sink that cannot deliver keeps the outbox full: the backfill stops, resumable, exit 6.
    (tmp_path / "b-dir").mkdir()
    config_path.write_text(
        config_path.read_text().replace(f"path: {tmp_path}/b.jsonl", f"path: {tmp_path}/b-dir")
        + "    retry: {max_attempts: 1, initial_backoff: 0.01}\n"
    )
    stuck = cli("backfill", "--since", since, "--until", until, "--restart", "--config", config)
    assert stuck.returncode == 6, stuck.stderr
    assert "the outbox stayed full" in stuck.stderr and f"backfill --since {since} --until {until}" in stuck.stderr
