"""The one command validator (appliance/protocol/commands.py): what every enqueue route and the CLI accept,
the XML devices get, and the CommandUUID limit shared with reports."""

from __future__ import annotations

import datetime as dt
import plistlib

import pytest

from appliance.protocol import messages
from appliance.protocol.commands import MAX_COMMAND_UUID, build_command, parse_command
from appliance.protocol.errors import MessageError


def _command(command_uuid: str = "C1", fmt=plistlib.FMT_XML, **keys) -> bytes:
    inner = {"RequestType": "DeviceLock", "PIN": "123456", **keys}
    return plistlib.dumps({"CommandUUID": command_uuid, "Command": inner}, fmt=fmt)


def test_an_xml_command_is_kept_byte_for_byte():
    body = _command()
    command = parse_command(body)
    assert (command.uuid, command.request_type, command.body) == ("C1", "DeviceLock", body)
    assert command.command == {"RequestType": "DeviceLock", "PIN": "123456"}


def test_a_binary_command_becomes_the_xml_devices_get():
    body = _command(fmt=plistlib.FMT_BINARY, Payload=b"\x00\xff", When=dt.datetime(2026, 1, 2))
    command = parse_command(body)
    assert command.body.startswith(b"<?xml") and b"bplist" not in command.body
    assert plistlib.loads(command.body) == plistlib.loads(body)
    assert plistlib.loads(command.body)["Command"]["Payload"] == b"\x00\xff"


def test_xml_in_another_encoding_is_rewritten_as_utf8():
    body = _command(Message="Grüße").decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16")
    command = parse_command(body)
    assert command.body.decode("utf-8").startswith('<?xml version="1.0" encoding="UTF-8"?>')
    assert plistlib.loads(command.body)["Command"]["Message"] == "Grüße"


def test_a_binary_command_xml_cannot_hold_is_refused_saying_so():
    body = plistlib.dumps({"CommandUUID": "C1", "Command": {"RequestType": "X", "Ref": plistlib.UID(3)}},
                          fmt=plistlib.FMT_BINARY)
    with pytest.raises(MessageError, match="cannot be written as the XML property list devices get"):
        parse_command(body)
    body = plistlib.dumps({"CommandUUID": "C1", "Command": {"RequestType": "X", "Text": "bell\x07"}},
                          fmt=plistlib.FMT_BINARY)
    with pytest.raises(MessageError, match="XML"):
        parse_command(body)


@pytest.mark.parametrize("length", [1, 36, 128, 129, 200, MAX_COMMAND_UUID, MAX_COMMAND_UUID + 1, 1000])
def test_one_command_uuid_limit_for_commands_and_reports(length):
    command_uuid = "u" * length
    report = plistlib.dumps({"UDID": "U1", "Status": "Acknowledged", "CommandUUID": command_uuid})
    try:
        messages.decode_report(report)
        report_ok = True
    except MessageError:
        report_ok = False
    try:
        parse_command(_command(command_uuid))
        command_ok = True
    except MessageError:
        command_ok = False
    try:
        build_command({"RequestType": "DeviceLock"}, command_uuid)
        json_ok = True
    except MessageError:
        json_ok = False
    assert command_ok == report_ok == json_ok == (length <= MAX_COMMAND_UUID)


@pytest.mark.parametrize("body, reason", [
    (plistlib.dumps({"Command": {"RequestType": "X"}}), "CommandUUID must be a non-empty string"),
    (plistlib.dumps({"CommandUUID": "  ", "Command": {"RequestType": "X"}}), "must not be blank"),
    (plistlib.dumps({"CommandUUID": "a\tb", "Command": {"RequestType": "X"}}), "printable"),
    (plistlib.dumps({"CommandUUID": "C", "Command": "x"}), "Command dictionary"),
    (plistlib.dumps({"CommandUUID": "C", "Command": {}}), "RequestType"),
    (plistlib.dumps({"CommandUUID": "C", "Command": {"RequestType": "Not a name"}}), "RequestType"),
    (b"not a plist", "not a command property list"),
    (plistlib.dumps([1]), "must be a dictionary"),
])
def test_bad_commands_are_refused_with_the_reason(body, reason):
    with pytest.raises(MessageError, match=reason):
        parse_command(body)


def test_the_json_form_gets_a_new_uuid_and_xml():
    command = build_command({"RequestType": "InstallProfile", "Payload": {"$data": "AP8="}})
    assert len(command.uuid) == 36 and command.request_type == "InstallProfile"
    assert plistlib.loads(command.body) == {"CommandUUID": command.uuid,
                                            "Command": {"RequestType": "InstallProfile", "Payload": b"\x00\xff"}}
    for bad in ([], {"RequestType": "X", "Key": None}, {"RequestType": "X", "Text": "nul\x00"}):
        with pytest.raises(MessageError):
            build_command(bad)
