"""DDM storage and the notifier's transaction on a real SQLite file, without a server: effective declarations
(references followed), who a change marks, and what the notifier queues (one command per enrollment, only
when its tokens changed)."""

from __future__ import annotations

import json
import plistlib

import pytest

from appliance.protocol import ddm
from appliance.service import ddm as service
from appliance.store import ddm as store
from appliance.store.db import connect_sync
from tests.support.fleet_seed import seed_devices


@pytest.fixture
def conn(tmp_path):
    connection = connect_sync(tmp_path / "ddm.db")
    connection.execute("BEGIN")
    service.install_builtins(connection, {"Name": "Org"})
    yield connection
    connection.execute("ROLLBACK")
    connection.close()


def save(conn, declaration_type: str, identifier: str, payload: dict) -> bool:
    declaration = ddm.check_declaration({"Type": declaration_type, "Identifier": identifier, "Payload": payload})
    service._check_references(conn, declaration)
    return store.put_declaration(conn, declaration)


def config(conn, identifier: str, echo: str = "x") -> bool:
    return save(conn, "com.apple.configuration.management.test", identifier, {"Echo": echo})


def dirty(conn) -> dict[str, bool]:
    return {row[0]: bool(row[1]) for row in conn.execute("SELECT enrollment_id, forced FROM ddm_dirty")}


def waiting_commands(conn, enrollment_id: str) -> list[dict]:
    return [{"uuid": row[0], "body": plistlib.loads(row[1])} for row in conn.execute(
        "SELECT c.uuid, c.body FROM queue q JOIN commands c ON c.uuid = q.command_uuid WHERE q.enrollment_id = ?",
        (enrollment_id,))]


def test_effective_declarations_follow_references_and_channels(conn):
    a, b = seed_devices(conn, 2, users=True)
    save(conn, "com.apple.asset.data", "asset", {"Reference": {"DataURL": "https://a.example/x"}})
    save(conn, "com.apple.configuration.management.test", "cfg", {"Echo": "x", "EchoDataAssetReference": "asset"})
    save(conn, "com.apple.activation.simple", "act", {"StandardConfigurations": ["cfg"]})
    store.add_to_set(conn, "s", "act")
    store.assign(conn, [a, f"{b}:USER-1"], "s")
    own = {i.identifier for i in store.effective_items(conn, a)} - {"act", "cfg", "asset"}
    assert {i.identifier for i in store.effective_items(conn, a)} >= {"act", "cfg", "asset"}
    assert "mdm-appliance.status-subscriptions" in own and "mdm-appliance.user-status-subscriptions" not in own
    user = {i.identifier for i in store.effective_items(conn, f"{b}:USER-1")}
    assert {"act", "cfg", "asset", "mdm-appliance.user-status-subscriptions"} <= user
    assert "mdm-appliance.status-subscriptions" not in user
    assert {i.identifier for i in store.effective_items(conn, b)} & {"act", "cfg", "asset"} == set()
    assert store.effective_declaration(conn, a, "asset", "asset") is not None
    assert store.effective_declaration(conn, b, "asset", "asset") is None
    assert store.effective_declaration(conn, a, "configuration", "asset") is None  # the kind must match


def test_a_change_marks_exactly_the_enrollments_it_reaches(conn):
    a, b, c = seed_devices(conn, 3)
    config(conn, "cfg.shared")
    config(conn, "cfg.c")
    save(conn, "com.apple.activation.simple", "act", {"StandardConfigurations": ["cfg.shared"]})
    store.add_to_set(conn, "ab", "act")
    store.add_to_set(conn, "c", "cfg.c")
    store.assign(conn, [a, b], "ab")
    store.assign(conn, [c], "c")
    store.mark_declarations(conn, ["cfg.shared"])  # reached through the activation naming it
    assert dirty(conn) == {a: False, b: False}
    conn.execute("DELETE FROM ddm_dirty")
    store.mark_sets(conn, ["c"], forced=True)
    assert dirty(conn) == {c: True}
    conn.execute("DELETE FROM ddm_dirty")
    conn.execute("INSERT INTO ddm_enrollments (enrollment_id, declarations_token) VALUES (?, 't')", (c,))
    # The appliance's own declarations change (an organization renamed): every DDM enrollment.
    assert service.install_builtins(conn, {"Name": "Org renamed"}) == 1
    assert set(dirty(conn)) == {a, b, c}
    assert service.install_builtins(conn, {"Name": "Org renamed"}) == 0


def test_the_notifier_queues_one_command_per_enrollment_only_when_its_tokens_change(conn):
    a, b, c = seed_devices(conn, 3)
    config(conn, "cfg")
    store.add_to_set(conn, "s", "cfg")
    store.assign(conn, [a, b], "s")
    store.mark(conn, [a, b, c])
    told, more = service.notify_batch(conn, 500)
    assert (sorted(told), more) == ([a, b], False)  # c has no sets and never spoke DDM: left alone
    [first] = waiting_commands(conn, a)
    data = first["body"]["Command"]["Data"]
    assert set(json.loads(data)["SyncTokens"]) == {"DeclarationsToken", "Timestamp"}
    assert first["body"]["CommandUUID"] == first["uuid"]

    # Nothing changed: marked again, nobody told.
    store.mark(conn, [a, b])
    assert service.notify_batch(conn, 500) == ([], False)

    # A change while a's command waits unfetched: the same command, new Data.
    config(conn, "cfg", "changed")
    store.mark_declarations(conn, ["cfg"])
    told, _ = service.notify_batch(conn, 500)
    assert sorted(told) == [a, b]
    [second] = waiting_commands(conn, a)
    assert second["uuid"] == first["uuid"] and second["body"]["Command"]["Data"] != data

    # Once the device holds it (sent, no NotNow since), the next change is a new command.
    conn.execute("UPDATE queue SET sent_at = '2026-01-01T00:00:00.000000Z' WHERE enrollment_id = ?", (a,))
    config(conn, "cfg", "changed again")
    store.mark_declarations(conn, ["cfg"])
    service.notify_batch(conn, 500)
    assert len(waiting_commands(conn, a)) == 2
    # NotNow'd after it was sent: the device dropped it, so it is brought up to date rather than doubled.
    conn.execute("UPDATE queue SET not_now_at = '2026-01-02T00:00:00.000000Z' WHERE enrollment_id = ?", (a,))
    config(conn, "cfg", "and again")
    store.mark_declarations(conn, ["cfg"])
    service.notify_batch(conn, 500)
    assert len(waiting_commands(conn, b)) == 1 and len(waiting_commands(conn, a)) == 2

    # Forced (the notify API): told although nothing changed.
    store.mark(conn, [c], forced=True)
    assert service.notify_batch(conn, 500)[0] == [c]


def test_batches_are_bounded_and_the_rest_waits(conn):
    ids = seed_devices(conn, 5)
    config(conn, "cfg")
    store.add_to_set(conn, "s", "cfg")
    store.assign(conn, ids, "s")
    store.mark(conn, ids)
    told, more = service.notify_batch(conn, 2)
    assert len(told) == 2 and more and store.dirty_count(conn) == 3
    while more:
        told, more = service.notify_batch(conn, 2)
    assert store.dirty_count(conn) == 0
    assert conn.execute("SELECT count(*) FROM queue").fetchone()[0] == 5


def test_a_declaration_in_use_cannot_go_or_change_kind(conn):
    config(conn, "cfg")
    save(conn, "com.apple.activation.simple", "act", {"StandardConfigurations": ["cfg"]})
    with pytest.raises(store.InUse, match="named by act"):
        store.delete_declaration(conn, "cfg")
    with pytest.raises(store.InUse, match="another kind"):
        save(conn, "com.apple.asset.data", "cfg", {"Reference": {"DataURL": "https://a.example/x"}})
    store.add_to_set(conn, "s", "act")
    with pytest.raises(store.InUse, match="in set"):
        store.delete_declaration(conn, "act")
    store.remove_from_set(conn, "s", "act")
    assert store.delete_declaration(conn, "act") and store.delete_declaration(conn, "cfg")
    assert not store.delete_declaration(conn, "cfg")


def test_status_keeps_the_latest_per_declaration_and_bounded_history(conn):
    [a] = seed_devices(conn, 1)

    def report(valid: str, full: bool = False, **values) -> ddm.StatusReport:
        document = {"StatusItems": {"management": {"declarations": {"configurations": [
            {"identifier": "cfg", "active": valid == "valid", "valid": valid, "server-token": "t1"}]}},
            **values}, "Errors": [], "FullReport": full}
        return ddm.parse_status_report(json.dumps(document).encode())

    first = store.store_status(conn, a, report("valid", device={"os": "17.5"}), "r1", reports_kept=2, errors_kept=2)
    assert first[0]["previous"] is None and first[0]["valid"] == "valid"
    assert store.store_status(conn, a, report("valid"), "r2", reports_kept=2, errors_kept=2) == []
    changed = store.store_status(conn, a, report("invalid"), "r3", reports_kept=2, errors_kept=2)
    assert changed[0]["previous"] == {"active": True, "valid": "valid", "server_token": "t1"}
    assert [r[0] for r in conn.execute("SELECT report_id FROM ddm_status_reports ORDER BY id")] == ["r2", "r3"]
    for n in range(4):
        store.store_status(conn, a, report("invalid"), f"e{n}", reports_kept=2, errors_kept=2)
    assert conn.execute("SELECT count(*) FROM ddm_status_errors").fetchone()[0] == 2
    assert store.status_values(conn, [a])[a][0]["value"] == "17.5"  # kept: later reports did not carry it
    store.store_status(conn, a, report("invalid", full=True), "full", reports_kept=2, errors_kept=2)
    assert store.status_values(conn, [a])[a] == []  # a full report replaces everything
