"""I/O errors under the real server process: writes and fsyncs on its database fail with EIO (an LD_PRELOAD
shim, tests/support/faultfs.c, switched by a trigger file), then work again.

Requests are answered 503 with Retry-After and store nothing; /healthz and systemd's STATUS= name the I/O error;
once the disk works again the same requests succeed, without a restart.
"""

from __future__ import annotations

import ssl
import uuid

import httpx
import pytest

from tests.support.device_sim import DeviceSim, TestCA
from tests.support.harness import API_KEY, free_port, make_config
from tests.support.io_faults import build_shim
from tests.support.mdm_support import ServerProcess, command_body
from tests.support.notify import NotifySocket

UDID = "IO-ERROR-UDID-0001"


@pytest.fixture
def notify(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


async def test_io_errors_are_answered_503_and_the_server_recovers_without_a_restart(tmp_path, notify):
    shim = build_shim(tmp_path)
    ca = TestCA("IO Error Test Device CA", directory=tmp_path)
    port = free_port()
    config = make_config(tmp_path, port=port, identity={"trusted_ca_files": [str(ca.pem_path)]})
    data_dir, trigger = tmp_path / "state", tmp_path / "disk-fails"
    env = {"NOTIFY_SOCKET": str(notify.sock.getsockname()), **shim.env(data_dir / "appliance.db", trigger)}
    server = ServerProcess(config, port, tmp_path / "server.log", env=env)
    await server.start()
    try:
        notify.wait_for("READY=1", timeout=30)
        tls = ssl.create_default_context(cafile=str(data_dir / "ca.crt"))
        cert, key = ca.issue(UDID)
        async with DeviceSim(server.base_url, tls, cert, key, UDID) as device, \
                httpx.AsyncClient(base_url=server.base_url, verify=tls, timeout=30,
                                  headers={"Authorization": f"Bearer {API_KEY}"}) as api:
            await device.enroll()
            command_uuid = str(uuid.uuid4())
            enqueue = f"/v1/enqueue/{UDID}?nopush=1"

            trigger.touch()
            refused = await api.put(enqueue, content=command_body(command_uuid))
            idle = await device.idle()
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["retry-after"]) > 0
            assert refused.json()["error"]["code"] == "storage_unavailable"
            assert "I/O error" in refused.json()["error"]["message"]
            assert idle.status == 503 and int(idle.headers["retry-after"]) > 0
            health = (await api.get("/healthz")).json()
            assert health["status"] == "error" and health["checks"]["store"]["fault"] == "io_error"
            assert "I/O error" in notify.wait_for_status("ERROR:", timeout=30)
            notify.messages.clear()

            trigger.unlink()
            again = await api.put(enqueue, content=command_body(command_uuid))
            assert again.status_code == 200, again.text  # not 409: the refused enqueue stored nothing
            assert (await device.idle()).command_uuid == command_uuid
            assert (await api.get("/healthz")).json()["checks"]["store"]["fault"] is None
            # STATUS= drops the error as soon as the fault ends, not at its next minute's refresh.
            notify.wait_until(lambda message: any(
                line.startswith("STATUS=") and "devices enrolled" in line and "ERROR" not in line
                for line in message.split("\n")), 30, "STATUS= without the error")
        assert server.process.poll() is None  # never restarted
    finally:
        server.stop()
    assert server.process.returncode == 0
    log = (tmp_path / "server.log").read_text()
    assert "event=store_fault reason=io_error" in log and "event=store_recovered" in log
    assert "Traceback" not in log
