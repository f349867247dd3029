"""`status` is a rich table on a terminal and the plain lines when piped; --json is unchanged."""

from __future__ import annotations

import errno
import json
import os
import pty
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from tests.conftest import ROOT, cli, cli_in_process, write_config
from transport import timestamps


def _on_a_terminal(*args: str) -> tuple[int, str]:
    """Run the CLI with stdout on a pseudo-terminal; (exit code, what the terminal showed)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "200", "LINES": "50"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    os.close(follower)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError as exc:  # EIO: the child closed the terminal
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    process.wait(timeout=60)
    return process.returncode, b"".join(chunks).decode(errors="replace")


def test_status_is_a_table_on_a_terminal_and_plain_when_piped(sim, tmp_path):
    for status in ("completed", "failed", "running"):
        sim.world.create_job(team_id="team-sim", status=status)
    old = timestamps.format_utc(datetime.now(UTC) - timedelta(days=2))
    sim.world.create_job(team_id="team-sim", status="completed", created_at=old)
    config = str(write_config(tmp_path, sim.url, start_from="1d"))
    assert cli_in_process("once", "--config", config).returncode == 0
    assert cli("backfill", "--since", "3d", "--until", "1d", "--config", config).returncode == 0

    code, screen = _on_a_terminal("status", "--config", config)
    assert code == 0
    assert "━" in screen and "sinks" in screen and "backfills" in screen  # rich's tables
    assert "open jobs" in screen and "running 1" in screen
    lines = [line for line in screen.splitlines() if line.strip().startswith("local")]
    assert lines and "file" in lines[0] and "3" in lines[0]  # sink, type, delivered (2 live + 1 backfilled)

    piped = cli_in_process("status", "--config", config)
    assert piped.returncode == 0
    assert "━" not in piped.stdout and "\x1b[" not in piped.stdout
    assert "open jobs: 1 (running 1)" in piped.stdout
    assert f"{'sink':<16} {'backlog':>8} {'delivered':>10} {'dead':>6}  last error" in piped.stdout
    assert "backfill: team team-sim" in piped.stdout and "1 event(s), finished" in piped.stdout

    code, screen = _on_a_terminal("status", "--json", "--config", config)
    assert code == 0 and "━" not in screen
    data = json.loads(screen)
    assert [b["events"] for b in data["backfills"]] == [1]
    assert data["sinks"][0]["delivered"] == 3
