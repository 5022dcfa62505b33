"""Sans-I/O: check-in and report decoding, enrollment IDs, queue decisions and answers (no server, no db)."""

from __future__ import annotations

import plistlib

import pytest

from appliance.protocol import answers, messages
from appliance.protocol.enrollment import SHARED_IPAD_USER_ID, resolve
from appliance.protocol.errors import MessageError, UnknownMessageType


def _checkin(**keys) -> bytes:
    return plistlib.dumps(keys)


@pytest.mark.parametrize("keys, expected", [
    ({"UDID": "U1"}, ("U1", "U1", "Device")),
    ({"UDID": "U1", "UserID": "G1", "UserShortName": "ann"}, ("U1:G1", "U1", "User")),
    ({"UDID": "U1", "UserID": SHARED_IPAD_USER_ID, "UserShortName": "ann@example.org"},
     ("U1:ann@example.org", "U1", "Shared iPad")),
    ({"EnrollmentID": "E1"}, ("E1", "E1", "User Enrollment (Device)")),
    ({"EnrollmentID": "E1", "EnrollmentUserID": "EU1"}, ("E1:EU1", "E1", "User Enrollment")),
])
def test_enrollment_ids_follow_nanomdm(keys, expected):
    enrollment = resolve(keys)
    assert (enrollment.id, enrollment.device_id, enrollment.type) == expected
    assert enrollment.is_user_channel == (enrollment.id != enrollment.device_id)


@pytest.mark.parametrize("keys, reason", [
    ({}, "missing key UDID"),
    ({"UDID": ""}, "missing key UDID"),
    ({"UDID": 5}, "UDID must be a string, got an integer"),
    ({"UDID": "A:B"}, "must not contain ':'"),
    ({"UDID": "x" * 300}, "longer than"),
    ({"UDID": "a\nb"}, "control characters"),
    ({"UDID": "U", "UserID": SHARED_IPAD_USER_ID}, "without UserShortName"),
])
def test_enrollment_id_refusals(keys, reason):
    with pytest.raises(MessageError, match=reason):
        resolve(keys)


def test_authenticate_decodes_device_facts():
    message = messages.decode_checkin(_checkin(
        MessageType="Authenticate", UDID="U1", Topic="com.apple.mgmt.X", SerialNumber="C02X", OSVersion="14.4"))
    assert isinstance(message, messages.Authenticate)
    assert (message.topic, message.serial_number, message.os_version, message.model) == \
        ("com.apple.mgmt.X", "C02X", "14.4", None)


def test_token_update_decodes_push_fields():
    message = messages.decode_checkin(_checkin(
        MessageType="TokenUpdate", UDID="U1", Token=b"\x01\x02", PushMagic="M", Topic="T",
        UnlockToken=b"\x09", AwaitingConfiguration=True))
    assert isinstance(message, messages.TokenUpdate)
    assert (message.token, message.push_magic, message.unlock_token, message.awaiting_configuration) == \
        (b"\x01\x02", "M", b"\x09", True)


@pytest.mark.parametrize("keys, reason", [
    ({"UDID": "U1"}, "missing key MessageType"),
    ({"MessageType": 3, "UDID": "U1"}, "MessageType must be a string, got an integer"),
    ({"MessageType": "TokenUpdate", "UDID": "U1", "PushMagic": "M", "Topic": "T"}, "missing key Token"),
    ({"MessageType": "TokenUpdate", "UDID": "U1", "Token": "text", "PushMagic": "M", "Topic": "T"},
     "Token must be data, got a string"),
    ({"MessageType": "TokenUpdate", "UDID": "U1", "Token": b"t", "PushMagic": "M", "Topic": "T",
      "AwaitingConfiguration": 1}, "AwaitingConfiguration must be a boolean"),
    ({"MessageType": "Authenticate", "UDID": "U1"}, "missing key Topic"),
    ({"MessageType": "Authenticate", "Topic": "T"}, "missing key UDID"),
    ({"MessageType": "GetToken", "UDID": "U1"}, "missing key TokenServiceType"),
])
def test_checkin_refusals_name_the_key(keys, reason):
    with pytest.raises(MessageError, match=reason):
        messages.decode_checkin(_checkin(**keys))


def test_unknown_message_type_is_named():
    with pytest.raises(UnknownMessageType, match="unknown MessageType Frobnicate"):
        messages.decode_checkin(_checkin(MessageType="Frobnicate", UDID="U1"))


def test_not_a_plist_or_not_a_dict():
    with pytest.raises(MessageError, match="not a property list"):
        messages.decode_report(b"{json: 1}")
    with pytest.raises(MessageError, match="must be a dictionary"):
        messages.decode_report(plistlib.dumps([1]))


def test_set_bootstrap_token_empty_means_delete():
    message = messages.decode_checkin(_checkin(MessageType="SetBootstrapToken", UDID="U1", BootstrapToken=b""))
    assert message.bootstrap_token is None


def test_report_decoding():
    report = messages.decode_report(plistlib.dumps({
        "UDID": "U1", "Status": "Error", "CommandUUID": "C1",
        "ErrorChain": [{"ErrorCode": 7, "ErrorDomain": "D", "LocalizedDescription": "L"}, {"ErrorCode": "odd"}],
    }))
    assert report.is_final and report.command_uuid == "C1"
    assert report.error_chain[0].as_dict()["ErrorCode"] == 7
    assert report.error_chain[1].error_code is None  # kept, not refused: Apple says not to rely on codes


@pytest.mark.parametrize("keys, reason", [
    ({"UDID": "U1"}, "missing key Status"),
    ({"UDID": "U1", "Status": "Acknowledged"}, "missing key CommandUUID"),
    ({"UDID": "U1", "Status": "Acknowledged", "CommandUUID": ""}, "CommandUUID must not be empty"),
    ({"UDID": "U1", "Status": "Acknowledged", "CommandUUID": 5}, "CommandUUID must be a string"),
    ({"UDID": "U1", "Status": "Maybe"}, "unknown Status Maybe"),
    ({"UDID": "U1", "Status": "Error", "CommandUUID": "C", "ErrorChain": "x"}, "ErrorChain must be an array"),
    ({"UDID": "U1", "Status": "Error", "CommandUUID": "C", "ErrorChain": ["x"]}, r"ErrorChain\[0\]"),
    ({"Status": "Idle"}, "missing key UDID"),
])
def test_report_refusals(keys, reason):
    with pytest.raises(MessageError, match=reason):
        messages.decode_report(plistlib.dumps(keys))


def test_idle_needs_no_command_uuid():
    report = messages.decode_report(plistlib.dumps({"UDID": "U1", "Status": "Idle", "CommandUUID": ""}))
    assert report.command_uuid is None and not report.is_final


@pytest.mark.parametrize("status, starts, records, after_not_now", [
    ("Idle", True, False, False),
    ("Acknowledged", False, True, False),
    ("Error", False, True, False),
    ("CommandFormatError", False, True, False),
    ("NotNow", False, True, True),
])
def test_queue_plan_per_status(status, starts, records, after_not_now):
    keys = {"UDID": "U1", "Status": status}
    if status != "Idle":
        keys["CommandUUID"] = "C1"
    plan = answers.plan(messages.decode_report(plistlib.dumps(keys)))
    assert (plan.starts_session, plan.records_status, plan.after_not_now) == (starts, records, after_not_now)


def test_answers():
    assert answers.EMPTY.body == b"" and answers.EMPTY.content_type is None and answers.EMPTY.status == 200
    sent = answers.command("C1", b"<plist/>")
    assert sent.content_type == "application/xml; charset=UTF-8" and sent.body == b"<plist/>"
    assert plistlib.loads(answers.DIGEST_CHALLENGE.body) == {"DigestChallenge": ""}
    assert answers.USER_AUTHENTICATE_DECLINED.status == 410
    assert answers.token_service_not_offered("com.apple.maid").status == 400
    assert "'\\x00" in answers.token_service_not_offered("\x00" * 100).body.decode()
    with pytest.raises(AssertionError):
        answers.refusal(401, "never")
