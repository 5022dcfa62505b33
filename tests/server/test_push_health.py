"""Health tells the truth about pushes: /healthz (checks.push), /metrics and STATUS= turn to error, with
the cause, once pushes have been failing longer than [apns] unhealthy_after (here 1 s), and back to ok
when APNs answers again. APNs is the stand-in: stopped, refusing TLS, or answering 403."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from appliance.push.scheduler import PushService
from appliance.supervisor import status_line
from tests.support.apns_certs import make_ca, make_push_cert, make_server
from tests.support.apns_standin import StandIn
from tests.support.harness import API_KEY, free_port, make_config, start_server
from tests.support.notify import NotifySocket
from tests.support.push_support import add_enrollment, import_cert, metric_lines, scrape

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("apns-pki")
    server_ca = make_ca("Stand-in server CA")
    push_ca = make_ca("Stand-in Apple push CA")
    (folder / "apns-ca.pem").write_bytes(server_ca.cert_pem)
    return {"server": make_server(server_ca), "push_ca": push_ca, "ca_file": folder / "apns-ca.pem"}


@pytest.fixture
def quick(monkeypatch):
    """Seconds, not minutes: certificate polling, reconnect backoff, probing and health checks."""
    monkeypatch.setattr(PushService, "cert_poll_seconds", 0.1)
    monkeypatch.setattr(PushService, "backoff_max", 0.3)
    monkeypatch.setattr(PushService, "probe_interval", 0.3)
    monkeypatch.setattr(PushService, "health_check_seconds", 0.1)


@asynccontextmanager
async def apns_running(standin: StandIn):
    """The stand-in listening on its port until the block ends (then it is gone: connection refused)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(standin.serve)
        yield
        nursery.cancel_scope.cancel()


async def start(nursery, tmp_path, pki, standin: StandIn):
    path = make_config(tmp_path, apns={"url": standin.url, "ca_file": str(pki["ca_file"]),
                                       "unhealthy_after": "1s"})
    server = await start_server(nursery, path)
    await import_cert(server, make_push_cert(pki["push_ca"]))
    add_enrollment(server, "H-1", bytes([0xB1]) * 32)
    return server


async def push(server) -> int:
    async with server.api_client() as api:
        return (await api.post("/v1/push/H-1")).status_code


async def health(server) -> dict:
    async with server.client() as client:
        return (await client.get("/healthz")).json()


async def wait_for_push_status(server, status: str) -> dict:
    with trio.fail_after(15):
        while True:
            body = await health(server)
            if body["checks"]["push"]["status"] == status:
                return body
            await trio.sleep(0.1)


async def assert_degraded(server, cause: str) -> None:
    body = await wait_for_push_status(server, "error")
    check = body["checks"]["push"]
    assert body["status"] == "error"
    assert cause in check["failure"], check
    assert check["failing_seconds"] >= 1 and check["failing_since"], check
    text = await scrape(server)
    assert metric_lines(text, "mdm_push_status")[""] == 2
    assert metric_lines(text, "mdm_push_failing_seconds")[""] >= 1
    status = await status_line(server.runtime)  # the text STATUS= carries
    assert "ERROR: pushes failing for" in status and cause in status, status


async def assert_recovered(server) -> None:
    body = await wait_for_push_status(server, "ok")
    check = body["checks"]["push"]
    assert check["failure"] is None and check["failing_seconds"] == 0 and check["failing_since"] is None
    text = await scrape(server)
    assert metric_lines(text, "mdm_push_status")[""] == 0
    assert metric_lines(text, "mdm_push_failing_seconds")[""] == 0
    assert "failing" not in await status_line(server.runtime)


async def test_apns_stopped_degrades_health_metrics_and_status_until_it_is_back(nursery, tmp_path, pki, quick):
    standin = StandIn.create(pki["server"].cert_pem, pki["server"].key_pem, pki["push_ca"].cert_pem)
    async with apns_running(standin):
        server = await start(nursery, tmp_path, pki, standin)
        assert await push(server) == 200
        assert (await health(server))["checks"]["push"]["status"] == "ok"
    assert await push(server) == 500  # APNs gone: the connection is refused
    await assert_degraded(server, "APNs unreachable")
    async with apns_running(standin):  # back on the same port
        assert await push(server) == 200
        await assert_recovered(server)
        await server.aclose()


async def test_tls_refused_degrades_until_apns_takes_the_connection_again(nursery, tmp_path, pki, quick):
    standin = StandIn.create(pki["server"].cert_pem, pki["server"].key_pem, pki["push_ca"].cert_pem,
                             refuse="tls")
    async with apns_running(standin):
        server = await start(nursery, tmp_path, pki, standin)
        assert await push(server) == 500
        await assert_degraded(server, "TLS with APNs refused")
        assert (await health(server))["checks"]["push"]["connected"] is False
        standin.refuse = None
        with trio.fail_after(10):  # the client keeps trying with nothing to push: it gets through
            while not (await health(server))["checks"]["push"]["connected"]:
                await trio.sleep(0.1)
        assert await push(server) == 200
        await assert_recovered(server)
        await server.aclose()


async def test_403_from_apns_degrades_with_its_reason_until_a_push_gets_through(nursery, tmp_path, pki, quick):
    standin = StandIn.create(pki["server"].cert_pem, pki["server"].key_pem, pki["push_ca"].cert_pem,
                             refuse="403")
    async with apns_running(standin):
        server = await start(nursery, tmp_path, pki, standin)
        assert await push(server) == 500
        await trio.sleep(1.1)  # past unhealthy_after, with no push since
        await assert_degraded(server, "403 BadCertificate")
        standin.refuse = None
        assert await push(server) == 200
        await assert_recovered(server)
        await server.aclose()


def test_status_line_says_pushes_are_failing(tmp_path, pki):
    """STATUS= as systemd reads it: the real process, its notify socket, APNs on a port nobody listens on."""
    notify = NotifySocket(tmp_path / "notify.sock")
    port = free_port()
    config = make_config(tmp_path, port=port, apns={"url": f"https://localhost:{free_port()}",
                                                    "unhealthy_after": "1s"})
    environment = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "WATCHDOG_USEC")}
    environment.update(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--config", str(config)],
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        notify.wait_for("READY=1", timeout=30)
        context = ssl.create_default_context(cafile=str(tmp_path / "state" / "ca.crt"))
        api = httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context, timeout=30,
                           headers={"Authorization": f"Bearer {API_KEY}"})
        with api:
            ident = make_push_cert(pki["push_ca"])
            assert api.put("/v1/pushcert", content=ident.cert_pem + ident.key_pem).status_code == 200
            add_enrollment(tmp_path / "state", "H-1", bytes([0xB2]) * 32)
            assert api.post("/v1/push/H-1").status_code == 500
        message = notify.wait_for_status("ERROR: pushes failing for", timeout=20)
        assert "APNs unreachable" in message
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
            _, stderr = process.communicate(timeout=10)
            notify.close()
    assert "event=push_unhealthy" in stderr
