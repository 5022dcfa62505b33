"""The ABM store's rules without a server: what a fetch or sync page does to a device, who should get the
profile, how a failed assignment waits, and what a completed full fetch removes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from appliance.protocol.dep import DepDevice
from appliance.store import abm
from appliance.store.db import connect_sync
from appliance.store.timefmt import from_text


@pytest.fixture
def conn(tmp_path):
    conn = connect_sync(tmp_path / "abm.db")
    for name in ("a", "b"):
        abm.create_server(conn, name, b"-----BEGIN CERTIFICATE-----", b"key")
        abm.record_profile(conn, name, f"PROFILE-{name.upper()}", "hash")
    yield conn
    conn.close()


def device(serial: str, op_type: str | None = None, **facts) -> DepDevice:
    return DepDevice(serial, model=facts.pop("model", "iPad"), op_type=op_type, **facts)


def states(conn, server: str = "a") -> dict[str, str]:
    return {row["serial_number"]: row["assign_state"] for row in abm.list_devices(conn, server=server, limit=1000)}


def test_fetch_pages_then_completion_removes_who_the_fetch_did_not_name(conn):
    abm.apply_page(conn, "a", abm.FETCH, [device("S1"), device("S2"), device("S3")], "c1", False)
    assert states(conn) == {"S1": "pending", "S2": "pending", "S3": "pending"}
    abm.start_full_fetch(conn, "a")
    first = abm.apply_page(conn, "a", abm.FETCH, [device("S1")], "c2", True)
    assert not first.fetch_completed and first.gone == []
    # S3 still counts until the fetch completes; an unnamed S2 goes then.
    done = abm.apply_page(conn, "a", abm.FETCH, [device("S3")], "c3", False)
    assert done.fetch_completed and done.gone == ["S2"]
    assert states(conn)["S2"] == "removed"
    assert abm.sync_position(conn, "a")["phase"] == abm.SYNC and abm.sync_position(conn, "a")["cursor"] == "c3"


def test_added_modified_deleted_and_added_again(conn):
    page = abm.apply_page(conn, "a", abm.SYNC, [device("S1", "added")], "c1", False)
    assert page.added == ["S1"] and [kind for kind, _ in page.events] == ["added"]
    same = abm.apply_page(conn, "a", abm.SYNC, [device("S1", "modified")], "c2", False)
    assert same.modified == [] and same.events == []  # nothing a person would see changed
    renamed = abm.apply_page(conn, "a", abm.SYNC, [device("S1", "modified", description="Lab")], "c3", False)
    assert renamed.modified == ["S1"]
    gone = abm.apply_page(conn, "a", abm.SYNC, [device("S1", "deleted")], "c4", False)
    assert gone.deleted == ["S1"] and states(conn) == {"S1": "removed"}
    back = abm.apply_page(conn, "a", abm.SYNC, [device("S1", "added")], "c5", False)
    assert back.added == ["S1"] and states(conn) == {"S1": "pending"}


def test_a_device_moved_to_another_server_is_not_removed_by_the_old_ones_late_delete(conn):
    abm.apply_page(conn, "a", abm.SYNC, [device("S1", "added")], "c1", False)
    moved = abm.apply_page(conn, "b", abm.SYNC, [device("S1", "added")], "d1", False)
    assert moved.added == ["S1"] and abm.assigned_server(conn, "S1") == "b"
    late = abm.apply_page(conn, "a", abm.SYNC, [device("S1", "deleted")], "c2", False)
    assert late.deleted == [] and abm.assigned_server(conn, "S1") == "b"


def test_who_should_get_the_profile(conn):
    ours = device("MINE", "modified", profile_uuid="PROFILE-A", profile_status="pushed")
    abm.apply_page(conn, "a", abm.SYNC, [device("NEW", "added"), ours], "c1", False)
    assert states(conn) == {"NEW": "pending", "MINE": "assigned"}  # Apple already shows our profile on it
    abm.set_wanted(conn, ["NEW"], abm.UNASSIGNED, "by an operator")
    abm.apply_page(conn, "a", abm.SYNC, [device("NEW", "modified", description="x")], "c2", False)
    assert states(conn)["NEW"] == "unassigned"  # an operator's unassign sticks through syncs
    abm.set_wanted(conn, ["NEW"], abm.PENDING, "asked for")
    assert abm.due_assignments(conn, "a", "9999", 100) == ["NEW"]
    # Defined again (the config changed): devices with the old profile are assigned the new one.
    assert abm.record_profile(conn, "a", "PROFILE-A2", "hash2") == 1
    assert states(conn)["MINE"] == "pending"


def test_failed_assignments_wait_doubling_and_throttled_ones_a_day(conn):
    abm.apply_page(conn, "a", abm.SYNC, [device(s, "added") for s in ("F", "T", "N", "OK")], "c1", False)
    policy = abm.RetryPolicy(initial=600, cap=3600, throttled=86400)
    outcomes = [("F", abm.FAILED, "FAILED"), ("T", abm.THROTTLED, "THROTTLED"), ("N", abm.NOT_ACCESSIBLE, "no"),
                ("OK", abm.ASSIGNED, None)]
    abm.record_assignments(conn, "a", "PROFILE-A", outcomes, policy)
    rows = {row["serial_number"]: row for row in abm.list_devices(conn, server="a")}
    added = from_text(rows["OK"]["assigned_at"])
    assert rows["OK"]["assigned_profile_uuid"] == "PROFILE-A" and rows["OK"]["profile_status"] == "assigned"
    assert abs(from_text(rows["F"]["assign_next_at"]) - added - timedelta(seconds=600)) < timedelta(seconds=5)
    assert abs(from_text(rows["T"]["assign_next_at"]) - added - timedelta(days=1)) < timedelta(seconds=5)
    assert rows["N"]["assign_next_at"] is None and rows["N"]["assign_state"] == "not_accessible"
    for _ in range(3):
        abm.record_assignments(conn, "a", "PROFILE-A", [("F", abm.FAILED, "again")], policy)
    row = abm.list_devices(conn, serial="F")[0]
    waited = from_text(row["assign_next_at"]) - datetime.now(UTC)
    assert row["assign_attempts"] == 4 and timedelta(minutes=59) < waited <= timedelta(hours=1)  # capped
    assert abm.due_assignments(conn, "a", "2000-01-01T00:00:00.000000Z", 100) == []
    assert abm.next_assignment_at(conn, "a") is not None
