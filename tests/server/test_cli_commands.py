"""`mdm-appliance enqueue` with the catalog (typed values, "did you mean", --raw, confirmation of
destructive commands) and readable results (`command`, `commands`, `device`), run as operators run them
against the real server, with tests/support/device_sim.py answering commands as a Mac would."""

from __future__ import annotations

import json
import os
import plistlib
import pty
import subprocess
import sys

import pytest
import trio

from tests.server.test_cli_admin import ROOT, cli
from tests.support.apns_standin import Answer
from tests.support.harness import free_port
from tests.support.mdm_support import start_mdm_server
from tests.support.push_support import start_apns_standin


@pytest.fixture
async def mdm(nursery, tmp_path):
    handle = await start_mdm_server(nursery, tmp_path, port=free_port())
    yield handle
    handle.server.stop()


async def _enrolled(mdm, *udids: str) -> None:
    for udid in udids:
        async with mdm.device(udid) as device:
            await device.enroll()


async def _commands(mdm) -> dict[str, dict]:
    rows = await mdm.rows("SELECT uuid, body FROM commands")
    return {row["uuid"]: plistlib.loads(row["body"])["Command"] for row in rows}


async def _enqueue(mdm, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    return await cli(mdm.server.config_path, "enqueue", *args, stdin=stdin)


async def test_values_are_typed_by_the_catalog(mdm, tmp_path):
    await _enrolled(mdm, "DEV-1")
    profile = tmp_path / "wifi.mobileconfig"
    profile.write_bytes(b"\x00profile\xff")
    cases = [
        (("--type", "EraseDevice", "-k", "PIN", "123456"), {"PIN": "123456"}),
        (("--type", "DeviceLock", "-k", "PIN", "000123", "-k", "Message", "42"), {"PIN": "000123", "Message": "42"}),
        (("--type", "DeviceInformation", "-k", "Queries", "OSVersion", "-k", "Queries", "SerialNumber"),
         {"Queries": ["OSVersion", "SerialNumber"]}),
        (("--type", "DeviceInformation", "-k", "Queries", '["UDID"]'), {"Queries": ["UDID"]}),
        (("--type", "ProfileList", "-k", "ManagedOnly", "true"), {"ManagedOnly": True}),
        (("--type", "InstallApplication", "-k", "iTunesStoreID", "361309726"), {"iTunesStoreID": 361309726}),
        (("--type", "InstallProfile", "-k", "Payload", f"@{profile}"), {"Payload": b"\x00profile\xff"}),
        (("--type", "Settings", "-k", "Settings", '{"Item": "DeviceName", "DeviceName": "Desk 4"}'),
         {"Settings": [{"Item": "DeviceName", "DeviceName": "Desk 4"}]}),
    ]
    for args, keys in cases:
        code, out, err = await _enqueue(mdm, "DEV-1", *args, "--nopush", "--json")
        assert code == 0, (args, err)
        stored = (await _commands(mdm))[json.loads(out)["command_uuid"]]
        assert stored == {"RequestType": args[1], **keys}, args
        assert all(type(stored[key]) is type(value) for key, value in keys.items())


@pytest.mark.parametrize("args, words", [
    (("--type", "Foo"), "Foo is not a command in the catalog; --raw sends it anyway"),
    (("--type", "EraseDevise"), "did you mean EraseDevice?"),
    (("--type", "DeviceLock", "-k", "Pin", "1234"), "unknown key Pin (did you mean PIN?)"),
    (("--type", "DeviceInformation", "-k", "Queries", "OSVerison"), "did you mean OSVersion?"),
    (("--type", "DeviceInformation"), "missing key Queries"),
    (("--type", "ProfileList", "-k", "ManagedOnly", "maybe"), "must be true or false"),
    (("--type", "InstallProfile", "-k", "Payload", "@/nonexistent/file"), "cannot read /nonexistent/file"),
])
async def test_unknown_types_keys_and_values_are_refused_in_one_line(mdm, args, words):
    await _enrolled(mdm, "DEV-1")
    code, out, err = await _enqueue(mdm, "DEV-1", *args, "--nopush")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and words in err, err
    assert await _commands(mdm) == {}


async def test_raw_bypasses_the_catalog(mdm, tmp_path):
    await _enrolled(mdm, "DEV-1")
    code, out, err = await _enqueue(mdm, "DEV-1", "--raw", "--type", "SomeNewCommand", "-k", "Count", "3",
                                    "-k", "Name", "x", "--nopush", "--json")
    assert code == 0, err
    assert (await _commands(mdm))[json.loads(out)["command_uuid"]] == {"RequestType": "SomeNewCommand", "Count": 3,
                                                                       "Name": "x"}
    # A --plist file is checked too (and sent as the XML devices get); --raw sends it as it is.
    command = {"CommandUUID": "PLIST-1", "Command": {"RequestType": "EraseDevice", "PIN": 123456}}
    plist_file = tmp_path / "erase.plist"
    plist_file.write_bytes(plistlib.dumps(command, fmt=plistlib.FMT_BINARY))
    code, out, err = await _enqueue(mdm, "DEV-1", "--plist", str(plist_file), "--nopush")
    assert code == 1 and "key PIN must be a string, got an integer; --raw sends it anyway" in err, err
    code, out, err = await _enqueue(mdm, "DEV-1", "--plist", str(plist_file), "--raw", "--nopush")
    assert code == 0, err
    stored = await mdm.rows("SELECT body FROM commands WHERE uuid = 'PLIST-1'")
    assert stored[0]["body"].startswith(b"<?xml") and plistlib.loads(stored[0]["body"]) == command


async def test_a_destructive_command_to_several_devices_or_a_group_needs_yes_without_a_terminal(mdm):
    await _enrolled(mdm, "DEV-1", "DEV-2")
    for ids in (("DEV-1", "DEV-2"), ("group:staff",), ("DEV-1", "group:staff")):
        code, out, err = await _enqueue(mdm, *ids, "--type", "RestartDevice", "--nopush")
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert "RestartDevice is destructive" in err and "--yes" in err, err
    code, out, err = await _enqueue(mdm, "-", "--type", "EraseDevice", "--nopush", stdin=b"DEV-1\nDEV-2\n")
    assert code == 1 and "EraseDevice is destructive and would go to 2 enrollment(s)" in err, err
    assert await _commands(mdm) == {}
    # One device, or a command that is not destructive, goes without asking; --yes is for scripts.
    assert (await _enqueue(mdm, "DEV-1", "--type", "RestartDevice", "--nopush"))[0] == 0
    assert (await _enqueue(mdm, "DEV-1", "DEV-2", "--type", "ProfileList", "--nopush"))[0] == 0
    code, out, err = await _enqueue(mdm, "-", "--type", "RestartDevice", "--yes", "--nopush", "--json",
                                    stdin=b"DEV-1\nDEV-2\n")
    assert code == 0, err and set(json.loads(out)["status"]) == {"DEV-1", "DEV-2"}
    assert sorted(c["RequestType"] for c in (await _commands(mdm)).values()) == \
        ["ProfileList", "RestartDevice", "RestartDevice"]


def _run_on_a_terminal(config, args: list[str], answer: bytes) -> tuple[int, str]:
    """The CLI with a pseudo-terminal as stdin (as an operator at a shell); `answer` is what they type."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("MDM_APPLIANCE_URL", "MDM_APPLIANCE_API_KEY", "MDM_APPLIANCE_CA", "MDM_APPLIANCE_CONFIG"):
        env.pop(name, None)
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen([sys.executable, "-m", "appliance", *args, "--config", str(config)],
                                   stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        os.write(controller, answer)
        out, err = process.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    return process.returncode, (out + err).decode()


async def test_a_destructive_command_asks_on_a_terminal(mdm):
    await _enrolled(mdm, "DEV-1", "DEV-2")
    args = ["enqueue", "DEV-1", "DEV-2", "--type", "EraseDevice", "--nopush"]
    code, output = await trio.to_thread.run_sync(_run_on_a_terminal, mdm.server.config_path, args, b"n\n")
    assert code == 1 and "Send EraseDevice to 2 enrollment(s)? [y/N]" in output and "not sent" in output, output
    assert await _commands(mdm) == {}
    code, output = await trio.to_thread.run_sync(_run_on_a_terminal, mdm.server.config_path, args, b"y\n")
    assert code == 0, output
    assert [c["RequestType"] for c in (await _commands(mdm)).values()] == ["EraseDevice"]


async def test_results_are_readable(mdm):
    config = mdm.server.config_path
    uuids = {}
    async with mdm.device("MAC-1") as device:
        await device.enroll()
        for args in (("--type", "DeviceInformation", "-k", "Queries", "OSVersion", "-k", "Queries", "SerialNumber"),
                     ("--type", "ProfileList"), ("--type", "InstalledApplicationList"), ("--type", "SecurityInfo"),
                     ("--type", "RemoveProfile", "-k", "Identifier", "org.example.gone")):
            code, out, err = await _enqueue(mdm, "MAC-1", *args, "--nopush", "--json")
            assert code == 0, err
            uuids[args[1]] = json.loads(out)["command_uuid"]
        reply = await device.idle()
        while reply.command is not None:  # answered as a Mac would; RemoveProfile fails
            command = reply.command
            if command["Command"]["RequestType"] == "RemoveProfile":
                reply = await device.error(command["CommandUUID"], [{
                    "ErrorCode": 12029, "ErrorDomain": "MCMDMErrorDomain",
                    "LocalizedDescription": "Das Profil ist nicht installiert.",
                    "USEnglishDescription": "The profile is not installed."}])
            else:
                reply = await device.acknowledge(command["CommandUUID"], **device.result_for(command["Command"]))
        facts = device.facts()

    code, out, err = await cli(config, "command", uuids["DeviceInformation"])
    assert code == 0, err
    assert "MAC-1: Acknowledged at" in out and "Query responses (2)" in out
    assert any(line.split() == ["OSVersion", "14.4"] for line in out.splitlines()), out
    assert any(line.split() == ["SerialNumber", facts["SerialNumber"]] for line in out.splitlines()), out

    code, out, err = await cli(config, "command", uuids["ProfileList"])
    assert "Profiles (2)" in out and "org.example.wifi.staff" in out and "Wi-Fi (Staff)" in out, out
    code, out, err = await cli(config, "command", uuids["InstalledApplicationList"])
    lines = out.splitlines()
    assert any(line.split()[:2] == ["NAME", "VERSION"] and "BUNDLE" in line for line in lines), out
    assert any("Safari" in line and "17.4 (19618.1.15.11.12)" in line and "com.apple.Safari" in line
               for line in lines), out
    code, out, err = await cli(config, "command", uuids["SecurityInfo"])
    assert any(line.split() == ["FileVault:", "yes"] for line in out.splitlines()), out
    assert any(line.split() == ["Secure", "boot:", "full"] for line in out.splitlines()), out
    code, out, err = await cli(config, "command", uuids["RemoveProfile"])
    assert "MAC-1: Error at" in out and "error 12029 MCMDMErrorDomain: The profile is not installed." in out, out

    code, out, err = await cli(config, "commands", "MAC-1")
    removal = next(line for line in out.splitlines() if uuids["RemoveProfile"] in line)
    assert "12029 MCMDMErrorDomain: The profile is not installed." in removal, out
    # --json and --plist keep the raw result.
    code, out, err = await cli(config, "command", uuids["SecurityInfo"], "--json")
    assert json.loads(out)["enrollments"][0]["result"]["SecurityInfo"]["FDE_Enabled"] is True
    code, out, err = await cli(config, "command", uuids["ProfileList"], "--plist", "--enrollment", "MAC-1")
    assert len(plistlib.loads(out.encode())["ProfileList"]) == 2


async def test_device_shows_the_last_push_time_result_and_reason(nursery, tmp_path):
    apns = await start_apns_standin(nursery, tmp_path)
    standin = apns.standin
    mdm = await start_mdm_server(nursery, tmp_path, port=free_port(), apns=apns.apns)
    await apns.import_push_cert(mdm.server)
    async with mdm.device("DEV-1") as device:
        await device.enroll()
        standin.answers[device.push_token.hex()] = Answer(400, "BadDeviceToken")
    code, out, err = await cli(mdm.server.config_path, "push", "DEV-1")
    assert code == 1 and "400 BadDeviceToken" in out, (out, err)
    code, out, err = await cli(mdm.server.config_path, "device", "DEV-1")
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("last push:"))
    assert line.split()[2:4] == ["rejected", "at"] and line.endswith(": 400 BadDeviceToken"), line
    assert len(line.split()[4]) == 10 and line.split()[4][4] == "-"  # the date
    mdm.server.stop()
