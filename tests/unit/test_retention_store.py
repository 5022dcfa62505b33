"""Command expiry, pruning and vacuum on a real SQLite file, without a server: the store functions the
expiry and retention workers run as write jobs."""

from __future__ import annotations

import os
import plistlib
import sqlite3
from datetime import timedelta

import pytest

from appliance.store import queue, retention, schema, vacuum
from appliance.store.db import DatabaseInUse, connect_exclusive, connect_readonly, connect_sync
from appliance.store.timefmt import from_text

# Days in the future of the real clock the store reads: rows due then are not due now.
DAY1 = "2990-01-01T00:00:00.000000Z"
DAY2 = "2990-01-02T00:00:00.000000Z"
DAY3 = "2990-01-03T00:00:00.000000Z"


def _body(uuid: str) -> bytes:
    return plistlib.dumps({"CommandUUID": uuid, "Command": {"RequestType": "DeviceInformation"}})


@pytest.fixture
def conn(tmp_path):
    conn = connect_sync(tmp_path / "r.db")
    for udid in ("dev-a", "dev-b"):
        conn.execute("INSERT INTO devices (id, created_at, updated_at) VALUES (?, 'x', 'x')", (udid,))
        conn.execute("INSERT INTO enrollments (id, device_id, type, active, created_at, updated_at) "
                     "VALUES (?, ?, 'Device', 1, 'x', 'x')", (udid, udid))
    conn.execute("INSERT INTO enrollments (id, device_id, type, active, created_at, updated_at) "
                 "VALUES ('dev-a:user', 'dev-a', 'User', 1, 'x', 'x')")
    yield conn
    conn.close()


def _queue(conn, uuid: str, ids: list[str], expires_at: str | None = None) -> None:
    queue.enqueue(conn, uuid, "DeviceInformation", _body(uuid), ids)
    conn.execute("UPDATE queue SET expires_at = ? WHERE command_uuid = ?", (expires_at, uuid))


def _result(conn, enrollment_id: str, command_uuid: str, received_at: str, raw: bytes = b"<plist/>") -> None:
    conn.execute("INSERT INTO results (enrollment_id, command_uuid, status, raw, received_at) "
                 "VALUES (?, ?, 'Acknowledged', ?, ?)", (enrollment_id, command_uuid, raw, received_at))


def test_a_ttl_expires_the_rows_that_long_after_they_were_queued(conn):
    queue.enqueue(conn, "T", "DeviceInformation", _body("T"), ["dev-a", "dev-b"], ttl=3600)
    queue.enqueue(conn, "N", "DeviceInformation", _body("N"), ["dev-a"])
    rows = conn.execute("SELECT command_uuid, created_at, expires_at FROM queue ORDER BY id").fetchall()
    for uuid, created, expires in rows[:2]:
        assert uuid == "T" and from_text(expires) - from_text(created) == timedelta(hours=1)
    assert tuple(rows[2])[0::2] == ("N", None)


def test_an_expired_row_is_never_offered_even_before_it_is_taken_off(conn):
    _queue(conn, "OLD", ["dev-a"], "2000-01-01T00:00:00.000000Z")
    _queue(conn, "NEW", ["dev-a"], DAY1)
    queue.enqueue(conn, "EVER", "DeviceInformation", _body("EVER"), ["dev-b"])
    assert queue.next_command(conn, "dev-a")[0] == "NEW"  # OLD is past its expiry: skipped
    assert queue.next_command(conn, "dev-b")[0] == "EVER"  # no expiry: never expires
    assert conn.execute("SELECT count(*) FROM queue WHERE command_uuid = 'OLD'").fetchone()[0] == 1


def test_expire_turns_due_rows_into_expired_results_in_batches(conn):
    for n in range(5):
        _queue(conn, f"C{n}", ["dev-a", "dev-a:user"], DAY2)
    _queue(conn, "LATER", ["dev-a"], DAY3)
    queue.next_command(conn, "dev-a")  # C0 was sent to the device
    assert queue.expire(conn, DAY1, 100) == []  # nothing due yet
    first = queue.expire(conn, DAY2, 4)
    rest = queue.expire(conn, DAY2, 100)
    assert len(first) == 4 and len(rest) == 6
    expired = {(row["enrollment_id"], row["command_uuid"]) for row in first + rest}
    assert expired == {(e, f"C{n}") for n in range(5) for e in ("dev-a", "dev-a:user")}
    sent = next(row for row in first + rest if row["command_uuid"] == "C0" and row["enrollment_id"] == "dev-a")
    assert sent["sent_at"] is not None and sent["request_type"] == "DeviceInformation" and sent["device_id"] == "dev-a"
    statuses = conn.execute("SELECT status, count(*) FROM results GROUP BY status").fetchall()
    assert [tuple(row) for row in statuses] == [("Expired", 10)]
    assert [row["command_uuid"] for row in queue.pending(conn, "dev-a")] == ["LATER"]
    assert queue.next_expiry(conn) == DAY3


def test_a_cancelled_row_just_goes_at_its_expiry(conn):
    _queue(conn, "C", ["dev-a"], DAY2)
    queue.next_command(conn, "dev-a")
    queue.cancel_command(conn, "C")  # sent, so only marked cancelled
    assert queue.expire(conn, DAY2, 10) == []
    assert conn.execute("SELECT count(*) FROM queue").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 0


def test_a_late_answer_replaces_expired_but_a_repeat_does_not(conn):
    _queue(conn, "C", ["dev-a"], DAY2)
    queue.expire(conn, DAY2, 10)
    assert queue.store_report(conn, "dev-a", "C", "Acknowledged", b"answer") == "stored"
    assert queue.store_report(conn, "dev-a", "C", "Acknowledged", b"again") == "duplicate"
    row = queue.result(conn, "dev-a", "C")
    assert (row["status"], bytes(row["raw"])) == ("Acknowledged", b"answer")


def test_stuck_lists_devices_with_commands_not_nowed_more_than_the_threshold(conn):
    for uuid, ids in (("A1", ["dev-a"]), ("A2", ["dev-a:user"]), ("B1", ["dev-b"])):
        queue.enqueue(conn, uuid, "DeviceInformation", _body(uuid), ids)
    for uuid, eid, times in (("A1", "dev-a", 3), ("A2", "dev-a:user", 5), ("B1", "dev-b", 2)):
        for _ in range(times):
            assert queue.store_report(conn, eid, uuid, "NotNow", b"") == "not_now"
    found = queue.stuck(conn, 2)
    assert [d["device_id"] for d in found] == ["dev-a"]
    assert [(c["enrollment_id"], c["not_now_count"]) for c in found[0]["commands"]] == [("dev-a:user", 5), ("dev-a", 3)]
    assert queue.stuck_count(conn, 2) == 1 and queue.stuck_count(conn, 1) == 2 and queue.stuck_count(conn, 5) == 0
    assert [d["device_id"] for d in queue.stuck(conn, 1, limit=1)] == ["dev-a"]
    assert [d["device_id"] for d in queue.stuck(conn, 1, after="dev-a")] == ["dev-b"]


def test_prune_older_goes_in_batches_and_keeps_the_newest_result(conn):
    for n in range(7):
        _result(conn, "dev-a", f"C{n}", DAY1)
    rule = next(rule for rule in retention.AGE_RULES if rule.table == "results")
    assert retention.any_older(conn, rule, DAY2)
    assert retention.prune_older(conn, rule, DAY2, 4) == 4
    assert retention.prune_older(conn, rule, DAY2, 4) == 2  # the newest row stays (results are counted by rowid)
    assert retention.prune_older(conn, rule, DAY2, 4) == 0 and not retention.any_older(conn, rule, DAY2)
    assert [row[0] for row in conn.execute("SELECT command_uuid FROM results")] == ["C6"]
    _result(conn, "dev-a", "C7", DAY3)
    assert retention.prune_older(conn, rule, DAY2, 4) == 1
    assert [row[0] for row in conn.execute("SELECT command_uuid FROM results")] == ["C7"]


def test_prune_older_uses_the_time_index_of_every_rule(conn):
    present = retention.tables(conn)
    for rule in retention.AGE_RULES:
        if rule.table not in present:
            continue
        plan = " ".join(row[3] for row in conn.execute(
            f"EXPLAIN QUERY PLAN SELECT rowid FROM {rule.table} WHERE {rule.column} < ? ORDER BY {rule.column} "
            "LIMIT 10", (DAY1,)))
        assert "USING" in plan and "INDEX" in plan and rule.column in plan, (rule, plan)


def test_only_bodies_no_queue_row_or_result_names_are_deleted(conn):
    for uuid in ("QUEUED", "ANSWERED", "UNUSED1", "UNUSED2", "RECENT"):
        conn.execute("INSERT INTO commands (uuid, request_type, body, created_at) VALUES (?, 'X', x'00', ?)",
                     (uuid, DAY3 if uuid == "RECENT" else DAY1))
    conn.execute("INSERT INTO queue (enrollment_id, command_uuid, created_at) VALUES ('dev-a', 'QUEUED', ?)", (DAY1,))
    _result(conn, "dev-b", "ANSWERED", DAY1)
    found, after = retention.unused_commands(conn, DAY2, None, 2)
    batches = 1
    while after is not None:  # a full batch was looked at: go on from there
        more, after = retention.unused_commands(conn, DAY2, after, 2)
        found, batches = found + more, batches + 1
    assert sorted(found) == ["UNUSED1", "UNUSED2"] and batches == 3
    # Named by a queue row since it was found: it stays.
    conn.execute("INSERT INTO queue (enrollment_id, command_uuid, created_at) VALUES ('dev-b', 'UNUSED2', ?)", (DAY3,))
    assert retention.delete_commands(conn, found) == 1
    assert sorted(row[0] for row in conn.execute("SELECT uuid FROM commands")) == [
        "ANSWERED", "QUEUED", "RECENT", "UNUSED2"]


def test_database_stats_counts_every_table_on_a_read_only_connection(tmp_path, conn):
    for n in range(3):
        _result(conn, "dev-a", f"C{n}", DAY1)
    path = tmp_path / "r.db"
    reader = connect_readonly(path)
    try:
        stats = retention.database_stats(reader, path, sizes=True)
        with pytest.raises(sqlite3.OperationalError):
            reader.execute("DELETE FROM results")
    finally:
        reader.close()
    assert stats["rows"]["results"] == 3 and stats["rows"]["devices"] == 2 and stats["rows"]["enrollments"] == 3
    assert set(stats["rows"]) >= {"queue", "commands", "outbox", "schema_versions"}
    assert stats["auto_vacuum"] == "incremental" and stats["file_bytes"] > 0
    assert stats["table_bytes"]["results"] >= stats["page_size"]


def test_a_new_database_gives_freed_pages_back(tmp_path, conn):
    conn.execute("BEGIN")
    for n in range(400):
        _result(conn, "dev-a", f"C{n}", DAY1, raw=os.urandom(8000))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute("DELETE FROM results")
    freed = vacuum.free_pages(conn)
    assert freed > 700
    given = vacuum.release(conn, 256)
    assert given == 256 and vacuum.free_pages(conn) == freed - 256
    while vacuum.release(conn, 256):
        pass
    assert vacuum.free_pages(conn) == 0 and conn.execute("PRAGMA page_count").fetchone()[0] <= full - freed
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert os.path.getsize(tmp_path / "r.db") < full * 4096 / 4


def test_an_older_database_is_converted_when_small_and_the_mode_survives(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(str(path), isolation_level=None)  # as databases were made before incremental vacuum
    old.execute("PRAGMA journal_mode=WAL")
    schema.migrate(old)
    assert vacuum.mode(old) == "none"
    assert vacuum.prepare(old, path) == "incremental"
    old.close()
    again = connect_sync(path)
    assert vacuum.mode(again) == "incremental" and vacuum.prepare(again, path) == "incremental"
    again.close()


def test_an_exclusive_connection_is_refused_while_another_has_the_database_open(tmp_path, conn):
    with pytest.raises(DatabaseInUse):
        connect_exclusive(tmp_path / "r.db")
    conn.close()
    alone = connect_exclusive(tmp_path / "r.db")
    alone.close()
