"""appliance.store.queue on a real SQLite file: enqueue, FIFO, NotNow sessions, reports, clear, cancel."""

from __future__ import annotations

import plistlib

import pytest

from appliance.store import queue
from appliance.store.db import connect_sync


def _body(uuid: str, request_type: str = "DeviceInformation") -> bytes:
    return plistlib.dumps({"CommandUUID": uuid, "Command": {"RequestType": request_type}})


@pytest.fixture
def conn(tmp_path):
    conn = connect_sync(tmp_path / "q.db")
    for udid in ("dev-a", "dev-b"):
        conn.execute("INSERT INTO devices (id, created_at, updated_at) VALUES (?, 'x', 'x')", (udid,))
        conn.execute(
            "INSERT INTO enrollments (id, device_id, type, active, created_at, updated_at) "
            "VALUES (?, ?, 'Device', 1, 'x', 'x')", (udid, udid))
    yield conn
    conn.close()


def test_enqueue_shares_one_body_and_reports_unknown_ids(conn):
    outcome = queue.enqueue(conn, "C1", "DeviceInformation", _body("C1"), ["dev-a", "nope", "dev-b", "dev-a"])
    assert outcome == {"dev-a": None, "nope": queue.UNKNOWN_ENROLLMENT, "dev-b": None}
    assert conn.execute("SELECT count(*) FROM commands").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM queue WHERE command_uuid = 'C1'").fetchone()[0] == 2
    with pytest.raises(queue.CommandExists):
        queue.enqueue(conn, "C1", "DeviceInformation", _body("C1"), ["dev-a"])


def test_enqueue_to_only_unknown_ids_stores_nothing(conn):
    assert queue.enqueue(conn, "C9", "X", _body("C9"), ["ghost"]) == {"ghost": queue.UNKNOWN_ENROLLMENT}
    assert conn.execute("SELECT count(*) FROM commands").fetchone()[0] == 0


def test_fifo_and_final_status_takes_command_off(conn):
    for n in (1, 2, 3):
        queue.enqueue(conn, f"C{n}", "X", _body(f"C{n}"), ["dev-a"])
    uuid, body = queue.next_command(conn, "dev-a")
    assert uuid == "C1" and plistlib.loads(body)["CommandUUID"] == "C1"
    assert queue.next_command(conn, "dev-a")[0] == "C1"  # offered again until a final status
    assert queue.store_report(conn, "dev-a", "C1", "Acknowledged", b"raw1") == "stored"
    assert queue.store_report(conn, "dev-a", "C1", "Acknowledged", b"raw1") == "duplicate"
    assert queue.next_command(conn, "dev-a")[0] == "C2"
    assert queue.store_report(conn, "dev-a", "C2", "Error", b"raw2", [{"ErrorCode": 5}]) == "stored"
    assert queue.result(conn, "dev-a", "C2")["error_chain"] == '[{"ErrorCode": 5}]'
    assert [p["command_uuid"] for p in queue.pending(conn, "dev-a")] == ["C3"]
    assert queue.next_command(conn, "dev-b") is None


def test_reports_for_commands_never_given_are_kept_against_nothing(conn):
    queue.enqueue(conn, "CA", "X", _body("CA"), ["dev-a"])
    assert queue.store_report(conn, "dev-b", "CA", "Acknowledged", b"spoof") == "unknown"
    assert queue.store_report(conn, "dev-b", "CA", "Acknowledged", b"spoof") == "unknown"  # kept once
    assert queue.store_report(conn, "dev-b", "NOPE", "NotNow", b"x") == "unknown"
    assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 0
    assert queue.next_command(conn, "dev-a")[0] == "CA"
    strays = queue.stray_reports(conn, "dev-b")
    assert [(r["command_uuid"], r["status"], r["raw"]) for r in strays] == [
        ("NOPE", "NotNow", b"x"), ("CA", "Acknowledged", b"spoof")]
    assert queue.stray_reports(conn, "dev-a") == []


def test_stray_reports_keep_only_the_newest_per_enrollment(conn):
    for n in range(queue.STRAY_REPORTS_KEPT + 5):
        assert queue.store_report(conn, "dev-a", f"S{n}", "Error", b"x") == "unknown"
    queue.store_report(conn, "dev-b", "B0", "Error", b"x")
    kept = [r["command_uuid"] for r in queue.stray_reports(conn, "dev-a", limit=1000)]
    assert kept == [f"S{n}" for n in reversed(range(5, queue.STRAY_REPORTS_KEPT + 5))]
    assert len(queue.stray_reports(conn, "dev-b")) == 1


def test_not_now_for_a_command_cancelled_after_it_was_sent_is_not_stray(conn):
    queue.enqueue(conn, "K2", "X", _body("K2"), ["dev-a"])
    queue.next_command(conn, "dev-a")
    queue.cancel_command(conn, "K2")
    assert queue.store_report(conn, "dev-a", "K2", "NotNow", b"nn") == "not_now"
    assert conn.execute("SELECT count(*) FROM queue").fetchone()[0] == 0
    assert queue.stray_reports(conn, "dev-a") == []


def test_not_now_skipped_in_session_and_offered_after_next_idle(conn):
    queue.enqueue(conn, "N1", "X", _body("N1"), ["dev-a"])
    queue.enqueue(conn, "N2", "X", _body("N2"), ["dev-a"])
    queue.start_session(conn, "dev-a")
    assert queue.next_command(conn, "dev-a")[0] == "N1"
    assert queue.store_report(conn, "dev-a", "N1", "NotNow", b"nn") == "not_now"
    assert queue.next_command(conn, "dev-a", after_not_now=True)[0] == "N2"
    assert queue.store_report(conn, "dev-a", "N2", "NotNow", b"nn") == "not_now"
    assert queue.next_command(conn, "dev-a", after_not_now=True) is None
    queue.start_session(conn, "dev-a")
    assert queue.next_command(conn, "dev-a")[0] == "N1"
    row = conn.execute("SELECT not_now_count FROM queue WHERE command_uuid = 'N1'").fetchone()
    assert row[0] == 1


def test_cancel_keeps_rows_the_device_may_hold(conn):
    queue.enqueue(conn, "K1", "X", _body("K1"), ["dev-a", "dev-b"])
    assert queue.next_command(conn, "dev-a")[0] == "K1"  # dev-a holds it now
    assert queue.cancel_command(conn, "K1") == 2
    assert queue.next_command(conn, "dev-a") is None
    assert queue.next_command(conn, "dev-b") is None
    # dev-a's late report is still kept
    assert queue.store_report(conn, "dev-a", "K1", "Acknowledged", b"late") == "stored"
    assert conn.execute("SELECT count(*) FROM queue").fetchone()[0] == 0


def test_clear_queue(conn):
    for n in (1, 2):
        queue.enqueue(conn, f"Q{n}", "X", _body(f"Q{n}"), ["dev-a", "dev-b"])
    assert queue.clear_queue(conn, "dev-a") == 2
    assert queue.pending(conn, "dev-a") == []
    assert len(queue.pending(conn, "dev-b")) == 2
    assert queue.queue_depths(conn, ["dev-a", "dev-b"]) == {"dev-a": 0, "dev-b": 2}


def test_next_command_is_one_indexed_statement(conn):
    for sql in (queue._NEXT_ANY, queue._NEXT_AFTER_NOT_NOW):
        args = {"enrollment": "dev-a", "now": "2026-01-01T00:00:00.000000Z"}
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
        assert any("USING INDEX queue_next" in step for step in plan), plan
        assert not any(step.startswith("SCAN") for step in plan), plan  # every table reached by index
