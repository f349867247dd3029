"""The state file: created 0600, never silently reset, clear errors for anything unusable."""

import os
import sqlite3
import stat
import threading

import pytest

from exporter.state.store import SCHEMA_VERSION, StateError, StateStore


def test_created_private_and_reopenable(tmp_path):
    path = str(tmp_path / "sub" / "state.db")
    with StateStore(path) as store:
        store.commit_extraction("t", [], [("r1", "r1:completed", "{}")], "2026-01-01T00:00:00.000Z")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with StateStore(path) as store:
        assert store.checkpoint("t") == "2026-01-01T00:00:00.000Z"
        assert store.outbox_size() == 1


def test_checkpoint_only_moves_forward(tmp_path):
    with StateStore(str(tmp_path / "s.db")) as store:
        store.commit_extraction("t", [], [], "2026-01-02T00:00:00.000Z")
        store.commit_extraction("t", [], [], "2026-01-01T00:00:00.000Z")
        assert store.checkpoint("t") == "2026-01-02T00:00:00.000Z"


def test_a_failed_transaction_leaves_no_trace(tmp_path):
    with StateStore(str(tmp_path / "s.db")) as store:
        with pytest.raises(RuntimeError), store.transaction() as conn:
            conn.execute("INSERT INTO outbox(run_id, event_id, body, enqueued_at) VALUES ('r', 'e', '{}', 0)")
            raise RuntimeError("crash between writes")
        assert store.outbox_size() == 0


def test_corrupt_file_is_an_error_and_untouched(tmp_path):
    path = tmp_path / "state.db"
    garbage = b"this is not a database at all" * 100
    path.write_bytes(garbage)
    with pytest.raises(StateError, match="corrupt or not an SQLite database"):
        StateStore(str(path))
    assert path.read_bytes() == garbage


def test_foreign_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match="another application"):
        StateStore(str(path))
    assert path.read_bytes() == before


def test_newer_schema_is_refused(tmp_path):
    path = str(tmp_path / "s.db")
    StateStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="newer duvo-exporter"):
        StateStore(path)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(StateError, match="is a directory"):
        StateStore(str(tmp_path))
    with pytest.raises(StateError, match="does not exist"):
        StateStore(str(tmp_path / "missing.db"), create=False)


def test_read_only_directory_is_a_clear_error():
    """Run as an unprivileged user (root ignores permissions): a clear StateError, no file."""
    import shutil
    import sys
    import tempfile

    from tests.conftest import run_unprivileged

    directory = tempfile.mkdtemp(prefix="ro-state-")
    try:
        os.chmod(directory, 0o555)
        code = (
            "from exporter.state.store import StateStore, StateError\n"
            "try:\n"
            f"    StateStore({directory + '/s.db'!r})\n"
            "except StateError as exc:\n"
            "    print(exc)\n"
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        result = run_unprivileged([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
        assert "cannot create state file" in result.stdout, result.stderr
        assert not os.path.exists(directory + "/s.db")
    finally:
        os.chmod(directory, 0o755)
        shutil.rmtree(directory)


def test_outbox_prunes_only_what_every_sink_finished(tmp_path):
    with StateStore(str(tmp_path / "s.db")) as store:
        store.ensure_cursors(["a", "b"])
        store.commit_extraction("t", [], [(f"r{i}", f"r{i}:completed", "{}") for i in range(10)], None)
        store.advance_cursor("a", 10, delivered=10, filtered=0)
        store.advance_cursor("b", 4, delivered=4, filtered=0)
        assert store.prune_outbox(["a", "b"]) == 4
        assert [e.seq for e in store.read_outbox(4, 100, 10**6)] == [5, 6, 7, 8, 9, 10]
        assert store.backlog(store.cursor("b").seq) == 6


def test_new_sink_starts_at_the_end_of_the_outbox(tmp_path):
    with StateStore(str(tmp_path / "s.db")) as store:
        store.ensure_cursors(["a"])
        store.commit_extraction("t", [], [("r1", "r1:completed", "{}")], None)
        store.ensure_cursors(["a", "late"])
        assert store.cursor("a").seq == 0
        assert store.cursor("late").seq == 1


def test_a_version_1_state_is_migrated_in_place_and_keeps_everything(tmp_path):
    """A state file written by the previous release (schema 1) gains the webhook queue, the
    backfill cursors and per-sink outbox rows; its checkpoint, outbox and cursors are kept."""
    import sqlite3

    from exporter.state.store import _TABLES_V1, _statements

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    for statement in _statements(_TABLES_V1.replace(",\n    sink        TEXT            -- NULL", "\n    -- NULL")):
        conn.execute(statement)
    conn.execute("PRAGMA application_id = 0x4455564F")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO checkpoints VALUES ('t', '2026-01-01T00:00:00.000000Z', 0)")
    conn.execute("INSERT INTO outbox(run_id, event_id, body, enqueued_at) VALUES ('r1', 'r1:completed', '{}', 0)")
    conn.execute("INSERT INTO sink_cursors(sink, seq, delivered) VALUES ('s', 0, 5)")
    conn.commit()
    assert "sink" not in [row[1] for row in conn.execute("PRAGMA table_info(outbox)")]
    conn.close()

    with StateStore(str(path)) as store:
        assert store.checkpoint("t") == "2026-01-01T00:00:00.000000Z"
        assert [(e.run_id, e.sink) for e in store.read_outbox(0, 10, 10_000)] == [("r1", None)]
        assert store.cursor("s").delivered == 5
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"webhook_queue", "backfills", "run_facts", "run_totals", "insight_alerts", "diagnosis_held"} <= tables
    conn.close()


def test_an_outbox_row_for_one_sink_reaches_only_that_sink(tmp_path):
    from exporter.delivery.worker import SinkWorker
    from sinks.settings import SinkSettings

    store = StateStore(str(tmp_path / "s.db"))
    store.ensure_cursors(["a", "b"])
    store.commit_extraction("t", [], [("r1", "r1:completed", '{"run_id": "r1", "status": "completed"}')], None)
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO outbox(run_id, event_id, body, enqueued_at, sink) VALUES ('r0', 'r0:failed', "
            """'{"run_id": "r0", "status": "failed"}', 0, 'b')"""
        )
    got: dict[str, list[str]] = {"a": [], "b": []}

    class Recording:
        def __init__(self, name: str) -> None:
            self.name = name

        def send(self, events):
            from sinks.base import SendResult

            got[self.name] += [e["run_id"] for e in events]
            return SendResult.ok(len(events))

        def healthcheck(self) -> None: ...

        def close(self) -> None: ...

    for name in ("a", "b"):
        worker = SinkWorker(Recording(name), SinkSettings(name=name), StateStore(str(tmp_path / "s.db")), ["a", "b"])
        worker.drain(threading.Event())
    assert got == {"a": ["r1"], "b": ["r1", "r0"]}
    assert store.cursor("a").filtered == 1 and store.cursor("a").delivered == 1
