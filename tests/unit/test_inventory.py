"""Inventory answers read into facts (appliance.protocol.inventory) and stored (appliance.store.inventory),
the inventory schedule, and groups in the store (appliance.store.groups), on a real SQLite file. Answers
are built with plain plistlib, as a device would send them."""

from __future__ import annotations

import plistlib

import pytest

from appliance.protocol import catalog, inventory
from appliance.service.inventory import inventory_commands, queue_due
from appliance.store import groups, queue
from appliance.store import inventory as store
from appliance.store.db import connect_sync
from appliance.store.device_filter import FilterError

T0 = "2026-01-01T00:00:00.000000Z"
T1 = "2026-01-02T00:00:00.000000Z"
T2 = "2026-01-03T00:00:00.000000Z"


def answer(request_type: str, **keys) -> dict:
    raw = plistlib.dumps({"Status": "Acknowledged", "UDID": "D1", "CommandUUID": "C1", **keys})
    return plistlib.loads(raw)


def test_inventory_commands_fit_the_catalog_and_ask_the_documented_queries():
    for request_type in inventory.REQUEST_TYPES:
        catalog.check(inventory.command(request_type))
    queries = inventory.command("DeviceInformation")["Queries"]
    assert {"OSVersion", "BuildVersion", "DeviceName", "SerialNumber", "ModelName", "DeviceCapacity",
            "AvailableDeviceCapacity", "BatteryLevel", "IsSupervised", "IsActivationLockEnabled"} <= set(queries)
    built = inventory_commands(["DeviceInformation", "ProfileList"])
    assert [c.request_type for c in built] == ["DeviceInformation", "ProfileList"]
    assert plistlib.loads(built[0].body)["Command"]["Queries"] == list(inventory.QUERIES)
    assert built[0].uuid != inventory_commands(["DeviceInformation"])[0].uuid


def test_device_information_is_read_key_by_key():
    read = inventory.read_answer("DeviceInformation", answer("DeviceInformation", QueryResponses={
        "DeviceName": "Lab iPad", "OSVersion": "17.5.1", "BuildVersion": "21F90", "ModelName": "iPad",
        "Model": "iPad13,18", "ProductName": "iPad13,18", "SerialNumber": "DMPX1", "DeviceCapacity": 64,
        "AvailableDeviceCapacity": 12.5, "BatteryLevel": -1.0, "IsSupervised": True,
        "IsActivationLockEnabled": "yes", "LastCloudBackupDate": plistlib.loads(plistlib.dumps(
            {"d": __import__("datetime").datetime(2026, 1, 1)}))["d"], "PushToken": b"\x01\x02"}))
    facts = read.device
    assert (facts.device_name, facts.os_version, facts.build_version, facts.model_name) == \
        ("Lab iPad", "17.5.1", "21F90", "iPad")
    assert facts.device_capacity == 64.0 and facts.available_capacity == 12.5
    assert facts.battery_level is None  # -1: the device cannot tell
    assert facts.supervised is True and facts.activation_lock is None
    assert read.problems == ("QueryResponses.IsActivationLockEnabled: expected a boolean, got str",)
    assert facts.responses["PushToken"] == {"$data": "AQI="}
    assert facts.responses["LastCloudBackupDate"] == {"$date": "2026-01-01T00:00:00Z"}


def test_lists_and_security_info_are_read():
    profiles = inventory.read_answer("ProfileList", answer("ProfileList", ProfileList=[
        {"PayloadIdentifier": "org.example.wifi", "PayloadUUID": "U1", "PayloadDisplayName": "Wi-Fi",
         "PayloadVersion": 1, "IsManaged": True, "PayloadContent": [{"PayloadType": "com.apple.wifi.managed",
                                                                     "PayloadVersion": 1}]},
        {"PayloadDisplayName": "no identifier"}, "junk"])).profiles
    assert [(p.identifier, p.payload_types) for p in profiles] == [("org.example.wifi", ("com.apple.wifi.managed",))]
    certificates = inventory.read_answer("CertificateList", answer("CertificateList", CertificateList=[
        {"CommonName": "Root", "IsIdentity": False, "Data": b"der"}])).certificates
    assert certificates[0].common_name == "Root" and len(certificates[0].sha256) == 64
    apps = inventory.read_answer("InstalledApplicationList", answer("InstalledApplicationList",
                                 InstalledApplicationList=[{"Identifier": "com.apple.Pages", "Name": "Pages",
                                                            "ShortVersion": "14.0", "BundleSize": True}])).applications
    assert apps[0].identifier == "com.apple.Pages" and apps[0].bundle_size is None
    security = inventory.read_answer("SecurityInfo", answer("SecurityInfo", SecurityInfo={
        "PasscodePresent": True, "PasscodeCompliant": False, "FDE_Enabled": True,
        "ManagementStatus": {"EnrolledViaDEP": True, "UserApprovedEnrollment": True}})).security
    assert (security.passcode_present, security.passcode_compliant, security.filevault, security.enrolled_via_dep) \
        == (True, False, True, True)


@pytest.mark.parametrize("request_type, keys", [
    ("DeviceInformation", {}), ("DeviceInformation", {"QueryResponses": ["x"]}),
    ("SecurityInfo", {"SecurityInfo": "x"}), ("ProfileList", {"ProfileList": {}}),
    ("CertificateList", {}), ("InstalledApplicationList", {"InstalledApplicationList": 3}),
])
def test_an_answer_without_its_container_is_refused_by_name(request_type, keys):
    with pytest.raises(inventory.InventoryError, match=request_type.replace("DeviceInformation", "QueryResponses")
                       .replace("InstalledApplicationList", "InstalledApplicationList")):
        inventory.read_answer(request_type, answer(request_type, **keys))


# --- the store --------------------------------------------------------------------------------------

@pytest.fixture
def conn(tmp_path):
    conn = connect_sync(tmp_path / "i.db")
    for device, active in (("D1", 1), ("D2", 1), ("D3", 0)):
        conn.execute("INSERT INTO devices (id, device_name, os_version, build_version, model_name, created_at,"
                     " updated_at) VALUES (?, 'Auth name', '17.4', '21E219', 'iPad', ?, ?)", (device, T0, T0))
        conn.execute("INSERT INTO enrollments (id, device_id, type, active, token_update_count, enrolled_at,"
                     " created_at, updated_at) VALUES (?, ?, 'Device', ?, 1, ?, ?, ?)",
                     (device, device, active, T0, T0, T0))
    yield conn
    conn.close()


def test_device_information_replaces_authenticate_facts_it_names_and_dates_the_changes(conn):
    facts = inventory.DeviceFacts(os_version="17.5", build_version="21F79", device_capacity=64.0)
    before = store.history_facts(conn, "D1")
    store.record_device_information(conn, "D1", facts, T1)
    changes = store.record_history(conn, "D1", before, store.history_facts(conn, "D1"), "DeviceInformation", T1)
    assert changes == [("os_version", "17.4", "17.5"), ("build_version", "21E219", "21F79")]
    row = conn.execute("SELECT device_name, os_version, model_name FROM devices WHERE id = 'D1'").fetchone()
    assert tuple(row) == ("Auth name", "17.5", "iPad")  # what the answer left out stays
    assert store.history(conn, "D1")[0] == {"fact": "build_version", "old_value": "21E219", "new_value": "21F79",
                                            "source": "DeviceInformation", "changed_at": T1}
    found = store.inventory(conn, "D1")
    assert found["device_capacity"] == 64.0 and found["inventory_at"] == T1 and found["profiles"] == []
    assert store.inventory(conn, "D2") is None


def test_an_unchanged_list_is_not_rewritten_but_its_time_moves(conn):
    apps = [inventory.Application("com.a", "A", "1.0", "1", 10, False)]
    assert store.record_applications(conn, "D1", apps, T1) is True
    assert store.record_applications(conn, "D1", apps, T2) is False
    assert store.inventory(conn, "D1")["applications_at"] == T2
    assert store.record_applications(conn, "D1", [], T2) is True
    assert store.inventory(conn, "D1")["applications"] == []


def test_due_devices_follow_the_schedule_and_reenrollment(conn):
    assert store.due_devices(conn, T1, 10) == ["D1", "D2"]  # never queued; D3 is inactive
    store.schedule(conn, [("D1", T1, T2), ("D2", T1, "2026-01-05T00:00:00.000000Z")])
    assert store.due_devices(conn, T1, 10) == []
    assert store.due_devices(conn, T2, 10) == ["D1"]
    assert store.next_due(conn) == T2
    conn.execute("UPDATE enrollments SET enrolled_at = ? WHERE id = 'D2'", ("2026-01-02T06:00:00.000000Z",))
    assert store.due_devices(conn, "2026-01-02T07:00:00.000000Z", 10) == ["D2"]  # enrolled again since queued


def test_queue_due_never_queues_a_type_still_pending(conn):
    commands = inventory_commands(["DeviceInformation", "ProfileList"])
    queued, more = queue_due(conn, commands, T1, [T2, T2], limit=2)
    assert queued == ["D1", "D2"] and more is True
    assert queue.store_report(conn, "D1", commands[1].uuid, "Acknowledged", b"x") == "stored"
    again = inventory_commands(["DeviceInformation", "ProfileList"])
    queued, more = queue_due(conn, again, T2, [T2, T2], limit=10)
    assert queued == ["D1"] and more is False  # D2 still has both pending; D1 only DeviceInformation
    pending = store.pending_request_types(conn, ["D1", "D2"], ["DeviceInformation", "ProfileList"])
    assert pending == {"D1": {"DeviceInformation", "ProfileList"}, "D2": {"DeviceInformation", "ProfileList"}}
    assert conn.execute("SELECT count(*) FROM queue WHERE enrollment_id = 'D1'").fetchone()[0] == 2


# --- groups -------------------------------------------------------------------------------------------

def test_static_groups_log_every_change(conn):
    groups.create(conn, "Lab", filter_text=None, description="the lab", now=T0)
    assert groups.add_members(conn, "lab", ["D1", "D2", "D1"], T1) == 2
    assert groups.members(conn, "LAB") == ["D1", "D2"] and groups.groups_of(conn, "D1") == ["Lab"]
    with pytest.raises(groups.GroupError, match="no device with id nope"):
        groups.add_members(conn, "lab", ["D3", "nope"], T1)
    assert groups.members(conn, "lab") == ["D1", "D2"]  # nothing of the refused call
    assert groups.remove_members(conn, "lab", ["D2", "D3"], T2) == 1
    with pytest.raises(groups.GroupError, match="exists already"):
        groups.create(conn, "LAB", filter_text=None, description=None, now=T2)
    assert groups.delete(conn, "lab", T2) == 1
    changes = groups.changes_since(conn, 0)
    assert [(c.group, c.device_id, c.joined) for c in changes] == [
        ("Lab", "D1", True), ("Lab", "D2", True), ("Lab", "D2", False), ("Lab", "D1", False)]
    assert groups.changes_since(conn, changes[1].id) == changes[2:]
    assert groups.last_change_id(conn) == changes[-1].id


def test_dynamic_groups_follow_their_filter_and_the_facts(conn):
    group = groups.create(conn, "old-ipads", filter_text='os_version < "17.5" and model_name contains ipad',
                          description=None, now=T0)
    assert group["kind"] == "dynamic" and group["member_count"] == 3
    store.record_device_information(conn, "D1", inventory.DeviceFacts(os_version="17.10"), T1)
    assert groups.refresh_device(conn, "D1", T1) == 1
    assert groups.members(conn, "old-ipads") == ["D2", "D3"]
    assert groups.refresh_device(conn, "D2", T1) == 0
    groups.update(conn, "old-ipads", filter_text="os_version >= 17.10", now=T2)
    assert groups.members(conn, "old-ipads") == ["D1"]
    with pytest.raises(groups.GroupError, match="dynamic group"):
        groups.add_members(conn, "old-ipads", ["D2"], T2)
    with pytest.raises(FilterError):
        groups.create(conn, "seen", filter_text="last_seen < 1d ago", description=None, now=T2)


def test_group_names_in_id_lists_expand_to_members(conn):
    groups.create(conn, "lab", filter_text=None, description=None, now=T0)
    groups.add_members(conn, "lab", ["D2", "D1"], T0)
    groups.create(conn, "empty", filter_text=None, description=None, now=T0)
    ids, snapshots, unknown = groups.expand(conn, ["D3", "group:LAB", "D1", "group:empty", "group:nope"])
    assert ids == ["D3", "D1", "D2"] and unknown == ["group:nope"]
    assert [(s.name, s.members) for s in snapshots] == [("lab", ("D1", "D2")), ("empty", ())]
    with pytest.raises(groups.GroupError):
        groups.check_name("group:lab")
