"""The operator CLI as operators run it (`python -m appliance ...` in a subprocess, config only, no
flags) against the real server in the test's nursery; and backup + restore."""

from __future__ import annotations

import json
import os
import plistlib
import re
import sys
from pathlib import Path

import click
import sqlite_utils
import trio
from click.testing import CliRunner

from appliance.cli import main
from appliance.store import queue
from tests.support.apns_certs import make_ca, make_push_cert
from tests.support.fleet_seed import command_plist, seed_devices
from tests.support.harness import API_KEY, free_port, make_config, start_server

ROOT = Path(__file__).resolve().parents[2]


async def cli(config: Path, *args: str, stdin: bytes = b"", **extra_env: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("MDM_APPLIANCE_URL", "MDM_APPLIANCE_API_KEY", "MDM_APPLIANCE_CA", "MDM_APPLIANCE_CONFIG"):
        env.pop(name, None)
    env.update(extra_env)
    done = await trio.run_process([sys.executable, "-m", "appliance", *args, "--config", str(config)],
                                  stdin=stdin, capture_stdout=True, capture_stderr=True, check=False, env=env)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def _server(nursery, tmp_path):
    config = make_config(tmp_path, port=free_port())
    server = await start_server(nursery, config)
    ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 3, users=True))
    return config, server, ids


async def test_cli_reads_devices_and_commands(nursery, tmp_path):
    config, server, ids = await _server(nursery, tmp_path)
    code, out, err = await cli(config, "devices")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "SERIAL", "MODEL", "OS"]
    assert len(lines) == 4 and ids[0] in lines[1] and "SER000000" in lines[1] and "yes" in lines[1]

    code, out, err = await cli(config, "devices", "--json", "--serial", "SER000002")
    assert code == 0 and [d["id"] for d in json.loads(out)] == [ids[2]]

    code, out, err = await cli(config, "device", ids[0])
    assert code == 0 and f"{ids[0]}:USER-0" in out and "serial:" in out

    code, out, err = await cli(config, "enqueue", ids[0], ids[1], "--type", "DeviceInformation",
                               "-k", "Queries", '["OSVersion"]', "--nopush", "--json")
    assert code == 0, err
    answer = json.loads(out)
    command_uuid = answer["command_uuid"]
    assert set(answer["status"]) == {ids[0], ids[1]}
    body = await server.runtime.store.read(
        lambda conn: conn.execute("SELECT body FROM commands WHERE uuid = ?", (command_uuid,)).fetchone()[0])
    assert plistlib.loads(body)["Command"] == {"RequestType": "DeviceInformation", "Queries": ["OSVersion"]}

    profile = tmp_path / "profile.mobileconfig"
    profile.write_bytes(b"\x00profile bytes\xff")
    code, out, err = await cli(config, "enqueue", "-", "--type", "InstallProfile", "-k", "Payload", f"@{profile}",
                               "--nopush", "--json", stdin=f"{ids[2]}\n".encode())
    assert code == 0, err
    install_uuid = json.loads(out)["command_uuid"]
    body = await server.runtime.store.read(
        lambda conn: conn.execute("SELECT body FROM commands WHERE uuid = ?", (install_uuid,)).fetchone()[0])
    assert plistlib.loads(body)["Command"]["Payload"] == b"\x00profile bytes\xff"

    plist_uuid, raw = command_plist("ProfileList")
    plist_file = tmp_path / "cmd.plist"
    plist_file.write_bytes(raw)
    code, out, err = await cli(config, "enqueue", ids[0], "--plist", str(plist_file), "--nopush")
    assert code == 0, err
    assert ids[0] in out and f"command {plist_uuid} (ProfileList)" in err

    # A device answers; the CLI shows it.
    await server.runtime.store.write(queue.next_command, ids[0])
    report = plistlib.dumps({"UDID": ids[0], "CommandUUID": command_uuid, "Status": "Acknowledged",
                             "QueryResponses": {"OSVersion": "15.1"}})
    await server.runtime.store.write(queue.store_report, ids[0], command_uuid, "Acknowledged", report)

    code, out, err = await cli(config, "commands", ids[0])
    assert code == 0
    rows = out.splitlines()[1:]
    assert plist_uuid in rows[0] and command_uuid in rows[1] and "Acknowledged" in rows[1]

    code, out, err = await cli(config, "command", command_uuid)
    assert code == 0 and "pending: 1" in out and "Acknowledged: 1" in out
    code, out, err = await cli(config, "command", command_uuid, "--json")
    assert json.loads(out)["counts"] == {"pending": 1, "Acknowledged": 1}
    code, out, err = await cli(config, "command", command_uuid, "--plist", "--enrollment", ids[0])
    assert code == 0 and plistlib.loads(out.encode())["QueryResponses"] == {"OSVersion": "15.1"}

    code, out, err = await cli(config, "cancel", install_uuid, "--enrollment", ids[2])
    assert (code, out.strip()) == (0, f"{install_uuid} taken off 1 queue(s)"), err
    assert await server.runtime.store.read(queue.pending, ids[2]) == []
    code, out, err = await cli(config, "cancel", command_uuid, "--json")  # pending on ids[1] only now
    assert code == 0 and json.loads(out)["cancelled"] == 1, err
    assert await server.runtime.store.read(queue.pending, ids[1]) == []

    code, out, err = await cli(config, "clear-queue", ids[0])
    assert code == 0 and out.startswith("1 command(s) taken off")
    assert await server.runtime.store.read(queue.pending, ids[0]) == []


async def test_cli_failures_are_one_line_and_nonzero(nursery, tmp_path):
    config, server, ids = await _server(nursery, tmp_path)
    cases = [
        (("device", "NO-SUCH-DEVICE"), "404"),
        (("command", "NO-SUCH-UUID"), "404"),
        (("enqueue", ids[0]), "either --plist FILE or --type"),
        (("enqueue", "NOPE", "--type", "ProfileList", "--nopush"), "1 of 1 enrollment(s) failed"),
        (("push", ids[0]), "1 not pushed (HTTP 500)"),  # no push certificate: the push fails, and says so
        (("enqueue", ids[1], "--type", "ProfileList"), "1 not pushed (queued: they get it at their next check-in)"),
        (("clear-queue", "NOPE"), "no enrollment"),
        (("cancel", "NO-SUCH-UUID"), "no command"),
        (("cancel", "NO-SUCH-UUID", "--enrollment", ids[0]), "is not pending on"),
    ]
    for args, expected in cases:
        code, out, err = await cli(config, *args)
        assert code != 0, args
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and expected in last, (args, err)
    # A wrong key (the API's 401 reason, one line), and the key read from the config otherwise.
    code, out, err = await cli(config, "devices", MDM_APPLIANCE_API_KEY="not-the-key-0123456789")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and "401" in err and "API key" in err, err
    server.stop()
    await trio.sleep(0.5)
    code, out, err = await cli(config, "devices")
    assert code == 1 and err.strip().startswith("error: cannot reach the appliance"), err


async def test_backup_while_running_restores_by_pointing_data_dir_at_it(tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    backup = tmp_path / "backup"
    push_cert = make_push_cert(make_ca("Backup test push CA"))
    async with trio.open_nursery() as nursery:
        config, server, ids = await _server(nursery, live)
        command_uuid, body = command_plist()
        await server.runtime.store.write(queue.enqueue, command_uuid, "DeviceInformation", body, ids)
        async with server.api_client() as api:  # the push certificate lives in the database
            imported = await api.put("/v1/pushcert", content=push_cert.cert_pem + push_cert.key_pem)
            assert imported.status_code == 200, imported.text
            topic = imported.json()["topic"]
        code, out, err = await cli(config, "backup", str(backup))
        assert code == 0, err
        assert "3 devices, 6 enrollments, 3 queued commands" in err and "1 push certificates" in err, err
        code, out, err = await cli(config, "backup", str(backup))
        assert code == 1 and "not an empty folder" in err
        # Written after the backup: must not be in it.
        later_uuid, later = command_plist()
        await server.runtime.store.write(queue.enqueue, later_uuid, "DeviceInformation", later, ids)
        original_ca = (server.config.data_dir / "ca.crt").read_bytes()
        server.stop()

    names = sorted(path.name for path in backup.iterdir())
    assert {"appliance.db", "ca.crt", "ca.key", "server.crt", "server.key"} <= set(names), names
    assert not [name for name in names if name.endswith(("-wal", "-shm"))]
    for name in ("ca.key", "server.key"):
        assert (backup / name).read_bytes() == (server.config.data_dir / name).read_bytes()
    copy = sqlite_utils.Database(backup / "appliance.db")  # read by another library than the server's
    try:
        assert copy["queue"].count == 3 and copy["devices"].count == 3
        [stored] = list(copy["push_certificates"].rows)
        assert stored["topic"] == topic
    finally:
        copy.close()
    assert oct(backup.stat().st_mode & 0o777) == "0o700"
    assert (backup / "ca.key").stat().st_mode & 0o077 == 0

    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    config = make_config(restored_dir, storage={"data_dir": str(backup)})
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, config)
        assert (server.config.data_dir / "ca.crt").read_bytes() == original_ca
        async with server.api_client() as api:
            devices = (await api.get("/v1/devices")).json()["devices"]
            assert [device["id"] for device in devices] == ids
            assert (await api.get(f"/v1/commands/{command_uuid}")).status_code == 200
            assert (await api.get(f"/v1/commands/{later_uuid}")).status_code == 404
            restored_cert = await api.get("/v1/pushcert")
            assert restored_cert.status_code == 200 and restored_cert.json()["topic"] == topic
        assert server.runtime.push.certificate is not None  # loaded from the copy, usable for APNs
        assert server.runtime.push.certificate.topic == topic
        server.stop()


async def test_cli_uses_the_separate_api_listener(nursery, tmp_path):
    config = make_config(tmp_path, port=free_port(), api={"key": API_KEY, "listen": f"127.0.0.1:{free_port()}"})
    server = await start_server(nursery, config)
    await server.runtime.store.write(lambda conn: seed_devices(conn, 1))
    code, out, err = await cli(config, "devices", "--json")
    assert code == 0, err
    assert len(json.loads(out)) == 1


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    names = list(_commands(main))
    assert {"devices", "device", "commands", "command", "enqueue", "push", "clear-queue", "challenge",
            "backup"} <= {" ".join(name) for name in names}
    for name in names:
        result = runner.invoke(main, [*name, "--help"])
        assert result.exit_code == 0, name
        example = re.compile(rf"^\s*(Example:\s*)?mdm-appliance {re.escape(' '.join(name))}(\s|$)", re.M)
        assert example.search(result.output), f"{' '.join(name)}: no example in --help"
