"""The state file: created 0600, never silently reset, clear errors for anything unusable."""

import os
import sqlite3
import stat

import pytest

from exporter.state import SCHEMA_VERSION, StateError, StateStore


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
            "from exporter.state import StateStore, StateError\n"
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
