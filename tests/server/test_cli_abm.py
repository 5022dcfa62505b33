"""`mdm-appliance abm ...` as operators run it: key pair and token import with no server running (on the
database), then the same and the rest against the running server's admin API; refusals in one line."""

from __future__ import annotations

import json

import trio
from click.testing import CliRunner

from appliance.cli import main
from tests.server.test_cli_admin import cli
from tests.support.abm_support import start_sim, wait_for_state
from tests.support.dep_sim import DepSim
from tests.support.harness import free_port, make_config, start_server


def run(config, *args: str, stdin: str | None = None):
    """The CLI in this process, in a thread (its API client blocks); returns click's Result."""
    return trio.to_thread.run_sync(lambda: CliRunner().invoke(main, [*args, "--config", str(config)], input=stdin))


async def test_abm_cli_without_and_with_a_running_server(tmp_path, nursery):
    sim = DepSim()
    serials = sim.add_server("main").add_devices(4)
    config = make_config(tmp_path, port=free_port(),
                         abm={"api_url": await start_sim(nursery, sim), "sync_interval": "1h"})
    (await start_server(nursery, config)).stop()  # a first start creates the database; now none is running
    await trio.sleep(0.2)

    # No server running: the key pair and the token go into the database.
    code, out, err = await cli(config, "abm", "keypair", "main", "--out", str(tmp_path / "main.pem"))
    assert code == 0, err
    assert "token import main" in err
    certificate = (tmp_path / "main.pem").read_bytes()
    assert certificate.startswith(b"-----BEGIN CERTIFICATE-----") and b"PRIVATE" not in certificate + out.encode()
    wrong = tmp_path / "wrong.p7m"
    wrong.write_bytes(b"MIME-Version: 1.0\nContent-Type: application/pkcs7-mime\n\nnot base64 at all!")
    code, out, err = await cli(config, "abm", "token", "import", "main", str(wrong))
    assert code == 1 and len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "base64" in err
    token = tmp_path / "server_token.p7m"
    token.write_bytes(sim.token_file("main", certificate))
    result = await run(config, "abm", "token", "import", "main", str(token))
    assert result.exit_code == 0, result.output
    assert "imported the token of ABM server main" in result.output
    result = await run(config, "abm", "servers", "--json")
    assert result.exit_code == 0 and json.loads(result.output)[0]["has_token"] is True

    # A server started now syncs with what the CLI stored.
    server = await start_server(nursery, config)
    await wait_for_state(server, "main", lambda s: s["devices"].get("assigned") == 4)

    result = await run(config, "abm", "servers")
    assert result.exit_code == 0 and "main" in result.output and "assigned 4" in result.output
    result = await run(config, "abm", "keypair", "main")
    assert result.exit_code == 1 and "exists" in result.output
    result = await run(config, "abm", "unassign", serials[0])
    assert result.exit_code == 0 and f"{serials[0]}: unassigned (SUCCESS)" in result.output
    result = await run(config, "abm", "devices", "--state", "unassigned", "--json")
    assert [d["serial_number"] for d in json.loads(result.output)] == [serials[0]]
    result = await run(config, "abm", "assign", "-", stdin=f"{serials[0]}\nNOSUCHSERIAL\n")
    assert result.exit_code == 1 and f"{serials[0]}: pending" in result.output and "NOSUCHSERIAL" in result.output
    await wait_for_state(server, "main", lambda s: s["devices"].get("assigned") == 4)
    result = await run(config, "abm", "sync", "main", "--full")
    assert result.exit_code == 0 and "sync of main started" in result.output, result.output
    await sim.wait_for(lambda: len(sim.calls("/server/devices")) == 2)
    result = await run(config, "abm", "device", serials[1])
    assert result.exit_code == 0 and "assign state:" in result.output and "not enrolled yet" in result.output
    result = await run(config, "abm", "sync", "nobody")
    assert result.exit_code == 1 and "no ABM server 'nobody'" in result.output
    server.stop()
