"""Readable results: status, ErrorChain and a per-command summary from reports built with plain plistlib."""

from __future__ import annotations

import datetime as dt
import plistlib

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.protocol import catalog, results


def _report(**keys) -> bytes:
    return plistlib.dumps({"Status": "Acknowledged", "UDID": "U1", "CommandUUID": "C1", **keys})


def test_query_responses_are_a_table():
    summary = results.summarize_plist("DeviceInformation", _report(QueryResponses={
        "OSVersion": "17.5", "SerialNumber": "F2LX1234", "IsSupervised": True, "DeviceCapacity": 119.2,
        "OSUpdateSettings": {"AutomaticCheckEnabled": True}}))
    assert summary.status == "Acknowledged" and summary.errors == ()
    [table] = summary.tables
    assert table.columns == ("Query", "Value")
    assert dict(table.rows) == {"OSVersion": "17.5", "SerialNumber": "F2LX1234", "IsSupervised": "yes",
                                "DeviceCapacity": "119.2", "OSUpdateSettings": "{AutomaticCheckEnabled: yes}"}


def test_error_chain_has_code_domain_and_description():
    raw = plistlib.dumps({"Status": "Error", "UDID": "U1", "CommandUUID": "C1", "ErrorChain": [
        {"ErrorCode": 12021, "ErrorDomain": "MCMDMErrorDomain", "LocalizedDescription": "Gerät gesperrt",
         "USEnglishDescription": "The device is locked"},
        {"ErrorCode": 4001, "ErrorDomain": "MCProfileErrorDomain", "LocalizedDescription": "Profile invalid"},
        "not a dictionary", {"ErrorCode": True}]})
    summary = results.summarize_plist("InstallProfile", raw)
    assert summary.status == "Error"
    assert [e.to_json() for e in summary.errors] == [
        {"code": 12021, "domain": "MCMDMErrorDomain", "description": "The device is locked"},
        {"code": 4001, "domain": "MCProfileErrorDomain", "description": "Profile invalid"},
        {"code": None, "domain": None, "description": None}]


def test_profile_list_shows_names_and_identifiers_sorted_by_name():
    summary = results.summarize("ProfileList", {"Status": "Acknowledged", "ProfileList": [
        {"PayloadDisplayName": "Wi-Fi", "PayloadIdentifier": "org.example.wifi", "PayloadUUID": "A",
         "PayloadOrganization": "Example"},
        {"PayloadDisplayName": "MDM", "PayloadIdentifier": "org.example.mdm", "PayloadUUID": "B",
         "PayloadRemovalDisallowed": True}]})
    [table] = summary.tables
    assert table.columns[:2] == ("Name", "Identifier")
    assert [row[:2] for row in table.rows] == [("MDM", "org.example.mdm"), ("Wi-Fi", "org.example.wifi")]


def test_installed_apps_show_name_version_and_bundle_id():
    summary = results.summarize("InstalledApplicationList", {"Status": "Acknowledged", "InstalledApplicationList": [
        {"Name": "Safari", "ShortVersion": "17.5", "Version": "19618.2.12", "Identifier": "com.apple.Safari"},
        {"Name": "Keynote", "ShortVersion": "14.0", "Version": "14.0", "Identifier": "com.apple.iWork.Keynote"},
        {"Identifier": "com.example.noname"}]})
    [table] = summary.tables
    assert table.columns == ("Name", "Version", "Bundle ID")
    assert table.rows == (("-", "-", "com.example.noname"), ("Keynote", "14.0", "com.apple.iWork.Keynote"),
                          ("Safari", "17.5 (19618.2.12)", "com.apple.Safari"))


def test_security_info_shows_its_main_facts_first():
    summary = results.summarize("SecurityInfo", {"Status": "Acknowledged", "SecurityInfo": {
        "FDE_Enabled": True, "SystemIntegrityProtectionEnabled": True, "PasscodePresent": False,
        "FirewallSettings": {"FirewallEnabled": True, "BlockAllIncoming": False, "StealthMode": False},
        "SecureBoot": {"SecureBootLevel": "full", "ExternalBootLevel": "disallowed"},
        "ManagementStatus": {"EnrolledViaDEP": False, "UserApprovedEnrollment": True},
        "FDE_PersonalRecoveryKeyCMS": b"\x01" * 40, "SomethingNew": 3}})
    facts = dict(summary.facts)
    assert facts["FileVault"] == "yes" and facts["Passcode set"] == "no"
    assert facts["System Integrity Protection"] == "yes" and facts["Firewall"] == "yes"
    assert facts["Secure boot"] == "full" and facts["User-approved enrollment"] == "yes"
    assert facts["FDE_PersonalRecoveryKeyCMS"] == "<40 bytes>" and facts["SomethingNew"] == "3"
    labels = [label for label, _ in summary.facts]
    assert labels.index("Passcode set") < labels.index("FileVault") < labels.index("SomethingNew")


def test_other_query_commands_have_summaries():
    updates = results.summarize("AvailableOSUpdates", {"Status": "Acknowledged", "AvailableOSUpdates": [
        {"HumanReadableName": "macOS Sonoma 14.5", "Version": "14.5", "Build": "23F79", "ProductKey": "MSU_UPDATE_23F79",
         "IsCritical": False, "RestartRequired": True}]})
    assert updates.tables[0].rows == (("macOS Sonoma 14.5", "14.5", "23F79", "MSU_UPDATE_23F79", "no", "yes"),)
    status = results.summarize("OSUpdateStatus", {"OSUpdateStatus": [
        {"ProductKey": "K", "Status": "Downloading", "IsDownloaded": False, "DownloadPercentComplete": 0.42}]})
    assert status.tables[0].rows == (("K", "Downloading", "no", "42%"),)
    users = results.summarize("UserList", {"Users": [{"UserName": "ann", "FullName": "Ann", "IsLoggedIn": True}]})
    assert users.tables[0].rows[0][:3] == ("ann", "Ann", "yes")
    managed = results.summarize("ManagedApplicationList", {"ManagedApplicationList": {
        "com.example.b": {"Status": "Managed", "ManagementFlags": 1}, "com.example.a": {"Status": "Installing"}}})
    assert managed.tables[0].rows == (("com.example.a", "Installing", "-"), ("com.example.b", "Managed", "1"))
    certificates = results.summarize("CertificateList", {"CertificateList": [
        {"CommonName": "Example Root", "IsIdentity": False, "Data": b"0\x82"}]})
    assert certificates.tables[0].rows == (("Example Root", "no"),)
    location = results.summarize("DeviceLocation", {"Latitude": 52.52, "Longitude": 13.405, "HorizontalAccuracy": 5.0,
                                                    "Timestamp": "2026-01-02T03:04:05Z"})
    assert dict(location.facts)["Latitude"] == "52.52" and dict(location.facts)["Located at"] == "2026-01-02T03:04:05Z"
    code = results.summarize("ActivationLockBypassCode", {"Status": "Acknowledged", "UDID": "U",
                                                          "ActivationLockBypassCode": "ABCDE-FGHIJ"})
    assert code.facts == (("ActivationLockBypassCode", "ABCDE-FGHIJ"),)
    lock = results.summarize("DeviceLock", {"Status": "Acknowledged", "MessageResult": "Sent"})
    assert lock.facts == (("MessageResult", "Sent"),)
    scheduled = results.summarize("ScheduleOSUpdate", {"UpdateResults": [
        {"ProductKey": "K", "InstallAction": "InstallASAP", "Status": "Idle"}]})
    assert scheduled.tables[0].rows == (("K", "InstallASAP", "Idle"),)


def test_every_query_command_of_the_catalog_has_a_summary_of_its_own():
    inventory = {spec.request_type for spec in catalog.commands() if spec.category == "inventory"}
    assert inventory <= set(results.SUMMARIZED)
    assert {"AvailableOSUpdates", "OSUpdateStatus", "UserList", "DeviceLocation"} <= set(results.SUMMARIZED)


def test_no_answer_yet_and_unreadable_answers():
    assert results.summarize_plist("ProfileList", None) == results.Summary("ProfileList", None)
    broken = results.summarize_plist("ProfileList", b"\x00not a plist")
    assert broken.status is None and broken.facts[0][1].startswith("unreadable (12 bytes)")
    odd = results.summarize("ProfileList", {"Status": "Acknowledged", "ProfileList": "not a list"})
    assert odd.status == "Acknowledged" and odd.tables[0].rows == ()
    odd = results.summarize("DeviceInformation", {"Status": "Acknowledged", "QueryResponses": ["x"]})
    assert odd.facts == (("QueryResponses", "x"),)


def test_text_shows_values_in_one_short_line():
    assert results.text(dt.datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02 03:04:05"
    assert results.text(b"abc") == "<3 bytes>" and results.text(None) == "-"
    assert results.text(["a", 1, False]) == "a, 1, no"
    assert results.text("line one\nline two") == "line one line two"
    assert len(results.text("x" * 1000)) == results.MAX_TEXT


leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=20)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                            max_size=4), max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(request_type=st.sampled_from([*results.SUMMARIZED, "Other", None]),
       result=st.dictionaries(st.sampled_from(["Status", "ErrorChain", "QueryResponses", "ProfileList", "SecurityInfo",
                                               "InstalledApplicationList", "ManagedApplicationList", "Users", "Settings",
                                               "AvailableOSUpdates", "OSUpdateStatus", "UpdateResults", "Latitude"]),
                              values, max_size=4))
def test_any_result_summarizes_to_text(request_type, result):
    summary = results.summarize(request_type, result)
    json_form = summary.to_json()
    for _, value in summary.facts:
        assert isinstance(value, str)
    for table in json_form["tables"]:
        assert all(isinstance(cell, str) for row in table["rows"] for cell in row)
        assert all(len(row) == len(table["columns"]) for row in table["rows"])
