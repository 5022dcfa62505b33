"""`mdm-appliance ddm ...` as operators run it (a subprocess, config only) against the real server, with a
simulated device syncing and reporting in between."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import trio

from click.testing import CliRunner

from appliance.cli import main
from tests.support.ddm_client import DdmClient
from tests.support.ddm_support import configuration, start_ddm_server
from tests.support.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
UDID = "DDM-CLI-0001"


async def cli(config: Path, *args: str, stdin: bytes = b"", process: bool = False) -> tuple[int, str, str]:
    """`mdm-appliance ddm ARGS --config CONFIG`: in a child process as operators run it (process=True), else
    the same click command in a thread (its API client blocks; the server runs on this event loop)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("MDM_APPLIANCE_URL", "MDM_APPLIANCE_API_KEY", "MDM_APPLIANCE_CA", "MDM_APPLIANCE_CONFIG"):
        env.pop(name, None)
    argv = ["ddm", *args, "--config", str(config)]
    if process:
        done = await trio.run_process([sys.executable, "-m", "appliance", *argv], stdin=stdin, capture_stdout=True,
                                      capture_stderr=True, check=False, env=env)
        return done.returncode, done.stdout.decode(), done.stderr.decode()
    result = await trio.to_thread.run_sync(lambda: CliRunner().invoke(main, argv, input=stdin, env=env))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
async def ddm(nursery, tmp_path):
    handle = await start_ddm_server(nursery, tmp_path, apns=False, server={"listen": f"127.0.0.1:{free_port()}"})
    yield handle
    handle.server.stop()


async def test_the_ddm_cli_manages_declarations_and_shows_status(ddm, tmp_path):
    config = ddm.server.config_path
    (tmp_path / "cfg.json").write_text(json.dumps(configuration("cfg.cli", Echo="one")))
    (tmp_path / "act.json").write_text(json.dumps(
        {"Type": "com.apple.activation.simple", "Identifier": "act.cli", "Payload": {"StandardConfigurations": ["cfg.cli"]}}))
    (tmp_path / "bad.json").write_text(json.dumps(
        {"Type": "com.apple.configuration.passcode.settings", "Identifier": "pc", "Payload": {"MinimumLength": "x"}}))
    (tmp_path / "odd.json").write_text(json.dumps(configuration("odd", "com.apple.configuration.future.thing")))

    code, out, err = await cli(config, "put", str(tmp_path / "cfg.json"), str(tmp_path / "act.json"), process=True)
    assert code == 0, err
    assert out.splitlines() == ["stored cfg.cli", "stored act.cli"]
    code, out, err = await cli(config, "put", str(tmp_path / "cfg.json"))
    assert (code, out.strip()) == (0, "stored cfg.cli: already so, nothing changed")
    code, out, err = await cli(config, "put", str(tmp_path / "bad.json"), process=True)
    assert code == 1 and out == "" and err.startswith("error: ") and "Payload.MinimumLength" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = await cli(config, "put", str(tmp_path / "odd.json"))
    assert code == 0 and err.startswith("warning: ") and "not in Apple's schema" in err

    code, out, err = await cli(config, "set-add", "staff", "act.cli")
    assert (code, out.strip()) == (0, "act.cli is in set staff"), err
    code, out, err = await cli(config, "assign", "staff", "-", stdin=f"{UDID}\n".encode())
    assert (code, out.strip()) == (0, "set staff newly assigned to 1 enrollment(s)"), err

    code, out, err = await cli(config, "declarations")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["IDENTIFIER", "TYPE", "SETS"]
    assert any(line.startswith("act.cli") and "staff" in line for line in lines)
    code, out, err = await cli(config, "sets")
    assert "staff" in out and "act.cli" in out
    code, out, err = await cli(config, "declaration", "cfg.cli")
    assert json.loads(out)["Payload"] == {"Echo": "one"}

    async with ddm.device(UDID) as device:
        await device.enroll()
        client = DdmClient(device)
        await client.sync()
        await client.report_status(client.status_report(
            invalid={"cfg.cli": "Error.ConfigurationCannotBeApplied"},
            values={"device.operating-system.version": "17.5"}))

    code, out, err = await cli(config, "status")
    assert code == 0, err
    assert "cfg.cli: 0 applied, 1 invalid (Error.ConfigurationCannotBeApplied 1), 0 not yet reported (of 1)" in out
    assert "act.cli: 1 applied, 0 not yet reported (of 1)" in out
    code, out, err = await cli(config, "status", UDID)
    assert code == 0 and "sets: staff" in out
    assert any(line.split()[:3] == ["cfg.cli", "configuration", "invalid"] for line in out.splitlines())
    code, out, err = await cli(config, "values", UDID, "--prefix", ".StatusItems.device.%")
    assert ".StatusItems.device.operating-system.version  17.5" in out
    code, out, err = await cli(config, "errors", UDID)
    assert "Error.ConfigurationCannotBeApplied" in out
    code, out, err = await cli(config, "report", UDID)
    assert code == 0 and "StatusItems" in json.loads(out)

    code, out, err = await cli(config, "delete", "act.cli")
    assert code == 1 and "staff" in err
    code, out, err = await cli(config, "unassign", "staff", UDID)
    assert (code, out.strip()) == (0, "set staff taken off 1 enrollment(s)")
    code, out, err = await cli(config, "notify")
    assert code == 1 and "--id" in err


async def test_os_update_from_the_cli(ddm, tmp_path):
    config = ddm.server.config_path
    async with ddm.device(UDID) as device:
        await device.enroll()
        code, out, err = await cli(config, "os-update", "--version", "17.6", "--deadline", "2027-01-15T18:00",
                                   "--enrollment", UDID)
        assert code == 0, err
        assert out.splitlines() == [
            "set os-update-17.6: 17.6 by 2027-01-15T18:00:00 (device local time), newly assigned to 1 enrollment(s)",
            "os-update-17.6: 0 applied, 1 not yet reported (of 1)"]
        client = DdmClient(device)
        await client.sync()
        await client.report_status()
    code, out, err = await cli(config, "status", "--declaration", "os-update-17.6")
    assert out.strip() == "os-update-17.6: 1 applied, 0 not yet reported (of 1)"
    code, out, err = await cli(config, "os-update", "--version", "17.6", "--deadline", "next week",
                               "--enrollment", UDID)
    assert code == 1 and "deadline" in err and len(err.strip().splitlines()) == 1


async def test_os_update_and_assignment_for_a_group_from_the_cli(ddm):
    config = ddm.server.config_path
    async with ddm.device(UDID) as device, ddm.api() as api:
        await device.enroll()
        assert (await api.post("/v1/groups", json={"name": "lab-macs"})).status_code == 201
        assert (await api.put(f"/v1/groups/lab-macs/members/{UDID}")).status_code == 200
        code, out, err = await cli(config, "os-update", "--group", "lab-macs", "--version", "17.6", "--deadline",
                                   "2027-01-15T18:00", process=True)
        assert code == 0, err
        assert out.splitlines() == [
            "set os-update-17.6: 17.6 by 2027-01-15T18:00:00 (device local time), assigned to group lab-macs "
            "(1 member(s))",
            "os-update-17.6: 0 applied, 1 not yet reported (of 1)"]
        client = DdmClient(device)
        await client.sync()
        assert client.declarations["os-update-17.6"]["Payload"]["TargetOSVersion"] == "17.6"
        await client.report_status()
    code, out, err = await cli(config, "status", "--declaration", "os-update-17.6")
    assert out.strip() == "os-update-17.6: 1 applied, 0 not yet reported (of 1)"
    code, out, err = await cli(config, "status", "--declaration", "os-update-17.6", "--group", "lab-macs")
    assert out.strip() == "os-update-17.6: 1 applied, 0 not yet reported (of 1)", err
    code, out, err = await cli(config, "status", "--group", "nope")
    assert code == 1 and "no group named 'nope'" in err, (out, err)

    # A newer enforcement replaces the older one on the group.
    code, out, err = await cli(config, "os-update", "--group", "LAB-MACS", "--version", "17.7", "--deadline",
                               "2027-02-01T18:00")
    assert code == 0 and "taken off group lab-macs: os-update-17.6" in out.splitlines(), (out, err)
    code, out, err = await cli(config, "assign", "staff", "--group", "lab-macs")
    assert (code, out.strip()) == (0, "set staff newly assigned to group lab-macs"), err
    code, out, err = await cli(config, "group-sets", "lab-macs")
    assert out.split() == ["os-update-17.7", "staff"]
    code, out, err = await cli(config, "status", UDID)
    assert "from group lab-macs: os-update-17.7, staff" in out.splitlines()
    code, out, err = await cli(config, "unassign", "staff", "--group", "lab-macs")
    assert (code, out.strip()) == (0, "set staff taken off group lab-macs"), err

    for args, reason in [(("os-update", "--group", "nope", "--version", "17.8", "--deadline", "2027-03-01"),
                          "no group named 'nope'"),
                         (("os-update", "--version", "17.8", "--deadline", "2027-03-01"), "--group"),
                         (("assign", "staff"), "--group")]:
        code, out, err = await cli(config, *args)
        assert code == 1 and reason in err and len(err.strip().splitlines()) == 1, (args, err)
    code, out, err = await cli(config, "sets")
    assert "os-update-17.8" not in out  # the refused os-update stored nothing
