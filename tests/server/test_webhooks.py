"""Webhooks: the MicroMDM/NanoMDM event format, and durable delivery from the outbox to a real local
receiver that fails, goes away, comes back, while the appliance itself is restarted."""

from __future__ import annotations

import base64
import json
import plistlib
import re

import trio

from appliance.store import outbox
from appliance.webhook.events import acknowledge_event, checkin_event, reenrollment_event
from tests.support.harness import API_KEY, free_port, make_config, start_server
from tests.support.project import pyproject_version
from tests.support.webhook_receiver import Receiver, Running

HMAC_KEY = "webhook-secret-for-tests"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_checkin_event_has_the_microwebhook_shape():
    raw = b"<plist><dict><key>MessageType</key><string>TokenUpdate</string></dict></plist>"
    topic, body = checkin_event(message_type="TokenUpdate", udid="UDID-1", enrollment_id="", raw=raw,
                                url_params={"group": "a"}, ids={"id": "UDID-1", "type": "Device", "parent_id": None},
                                token_update_tally=1)
    event = json.loads(body)
    assert topic == event["topic"] == "mdm.TokenUpdate"
    assert set(event) == {"topic", "event_id", "created_at", "checkin_event"}
    assert re.fullmatch(r"[0-9a-f-]{36}", event["event_id"]) and ISO.match(event["created_at"])
    inner = event["checkin_event"]
    assert inner == {"udid": "UDID-1", "ids": {"id": "UDID-1", "type": "Device"}, "url_params": {"group": "a"},
                     "raw_payload": base64.b64encode(raw).decode(), "token_update_tally": 1}

    topic, body = checkin_event(message_type="Authenticate", udid="", enrollment_id="BYOD-ENROLLMENT",
                                raw=b"x", url_params=None, ids={}, token_update_tally=None)
    inner = json.loads(body)["checkin_event"]
    assert topic == "mdm.Authenticate"
    assert inner == {"enrollment_id": "BYOD-ENROLLMENT", "url_params": None, "raw_payload": "eA=="}


def test_acknowledge_event_is_mdm_connect():
    topic, body = acknowledge_event(udid="UDID-1", enrollment_id="", status="Acknowledged", command_uuid="C-1",
                                    raw=b"\x00\x01", url_params=None, ids={"id": "UDID-1:USER", "type": "User",
                                                                         "parent_id": "UDID-1"})
    event = json.loads(body)
    assert topic == event["topic"] == "mdm.Connect" and "checkin_event" not in event
    assert event["acknowledge_event"] == {
        "udid": "UDID-1", "ids": {"id": "UDID-1:USER", "type": "User", "parent_id": "UDID-1"},
        "status": "Acknowledged", "command_uuid": "C-1", "raw_payload": "AAE=",
    }
    idle = json.loads(acknowledge_event(udid="U", enrollment_id="", status="Idle", command_uuid=None, raw=b"",
                                        url_params=None, ids={})[1])["acknowledge_event"]
    assert "command_uuid" not in idle and idle["status"] == "Idle"


def test_reenrollment_event_has_the_same_envelope():
    topic, body = reenrollment_event(udid="UDID-1", enrollment_id="", ids={"id": "UDID-1", "type": "Device",
                                                                            "parent_id": None},
                                     previous_sha256="aa" * 32, sha256="bb" * 32, subject="CN=new",
                                     cleared_commands=2, bootstrap_token=True, unlock_token=False)
    event = json.loads(body)
    assert topic == event["topic"] == "appliance.Reenrollment"
    assert set(event) == {"topic", "event_id", "created_at", "reenrollment_event"} and ISO.match(event["created_at"])
    assert event["reenrollment_event"] == {
        "udid": "UDID-1", "ids": {"id": "UDID-1", "type": "Device"},
        "previous_certificate_sha256": "aa" * 32, "certificate_sha256": "bb" * 32, "certificate_subject": "CN=new",
        "cleared": {"commands": 2, "bootstrap_token": True, "unlock_token": False},
    }


def _event(enrollment_id: str, seq: int) -> tuple[str, bytes]:
    if seq % 2:
        return acknowledge_event(udid=enrollment_id, enrollment_id="", status="Idle", command_uuid=None,
                                 raw=b"idle", url_params={"seq": str(seq)}, ids={"id": enrollment_id, "type": "Device"})
    return checkin_event(message_type="TokenUpdate", udid=enrollment_id, enrollment_id="", raw=b"tu",
                         url_params={"seq": str(seq)}, ids={"id": enrollment_id, "type": "Device"},
                         token_update_tally=seq)


def _add_events(conn, enrollments: list[str], seqs: range) -> None:
    for seq in seqs:
        for enrollment_id in enrollments:  # interleaved across enrollments, as a busy fleet writes them
            topic, body = _event(enrollment_id, seq)
            outbox.add(conn, enrollment_id=enrollment_id, topic=topic, body=body)


async def _depth(server) -> int:
    return (await server.runtime.store.read(outbox.stats))["depth"]


async def test_delivery_is_in_order_signed_and_survives_outage_and_restart(tmp_path):
    receiver = Receiver(port=free_port(), status=503)
    config = make_config(tmp_path, webhook={
        "url": f"http://127.0.0.1:{receiver.port}/hook", "hmac_key": HMAC_KEY,
        "timeout": 2, "retry_initial": 0.05, "retry_max": 0.3,
    })
    enrollments = ["DEV-A", "DEV-B", "DEV-C:USER"]
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async with trio.open_nursery() as first_life:
        server = await start_server(first_life, config)
        async with Running(receiver):
            # The receiver answers 503: nothing is taken, everything is retried.
            await server.runtime.store.write(_add_events, enrollments, range(0, 4))
            await receiver.wait_for(lambda: receiver.attempts >= 6)
            assert receiver.accepted == [] and await _depth(server) == 12
            # It recovers for a moment and takes some events.
            receiver.status = 200
            await receiver.wait_for(lambda: len(receiver.accepted) >= 3)
            receiver.status = 500
        # The receiver is gone entirely (connection refused); more events pile up, visible in metrics/health.
        await server.runtime.store.write(_add_events, enrollments, range(4, 8))
        await trio.sleep(0.5)
        async with server.client(headers=headers) as client:
            metrics = (await client.get("/metrics")).text
            health = (await client.get("/healthz")).json()
        depth = await _depth(server)
        assert depth > 12
        assert f"mdm_webhook_outbox_depth {float(depth)}" in metrics
        assert re.search(r"^mdm_webhook_outbox_oldest_seconds [1-9]|^mdm_webhook_outbox_oldest_seconds 0\.[0-9]*[1-9]",
                         metrics, re.M)
        assert 'mdm_webhook_deliveries_total{outcome="failed"}' in metrics
        assert health["checks"]["webhooks"]["outbox_depth"] == depth
        assert health["checks"]["webhooks"]["last_error"]
        server.stop()

    # The appliance restarts with the receiver back: everything left is delivered.
    async with trio.open_nursery() as second_life:
        async with Running(receiver):
            receiver.status = 200
            server = await start_server(second_life, config)
            await receiver.wait_for(lambda: len({d.event["event_id"] for d in receiver.accepted}) >= 24)
            for _ in range(50):
                if await _depth(server) == 0:
                    break
                await trio.sleep(0.05)
            assert await _depth(server) == 0
            server.stop()

    assert all(delivery.signed_with(HMAC_KEY) for delivery in receiver.accepted)
    assert all(delivery.headers["content-type"].startswith("application/json") for delivery in receiver.accepted)
    assert {delivery.headers["user-agent"] for delivery in receiver.accepted} == {f"mdm-appliance/{pyproject_version()}"}
    first_seen: dict[str, dict] = {}
    for delivery in receiver.accepted:  # at least once: keep the first arrival of each event
        first_seen.setdefault(delivery.event["event_id"], delivery.event)
    assert len(first_seen) == 24
    for enrollment_id in enrollments:
        seqs = []
        for event in first_seen.values():
            inner = event.get("checkin_event") or event["acknowledge_event"]
            if inner["udid"] == enrollment_id:
                seqs.append(int(inner["url_params"]["seq"]))
        assert seqs == list(range(8)), (enrollment_id, seqs)


async def test_unsigned_without_key_and_idle_without_url(tmp_path):
    receiver = Receiver(port=free_port())
    config = make_config(tmp_path, webhook={"url": f"http://127.0.0.1:{receiver.port}/", "retry_initial": 0.05})
    async with trio.open_nursery() as nursery:
        async with Running(receiver):
            server = await start_server(nursery, config)
            await server.runtime.store.write(_add_events, ["DEV-1"], range(2))
            server.runtime.webhooks.wake()
            await receiver.wait_for(lambda: len(receiver.accepted) == 2)
            server.stop()
    assert all("x-hmac-signature" not in delivery.headers for delivery in receiver.accepted)

    # Without a URL nothing is sent, but events left behind are reported.
    other = tmp_path / "second"
    other.mkdir()
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, make_config(other))
        await server.runtime.store.write(_add_events, ["DEV-1"], range(1))
        async with server.client() as client:
            health = (await client.get("/healthz")).json()
        assert server.runtime.webhooks is None
        assert health["checks"]["webhooks"]["outbox_depth"] == 1 and health["checks"]["webhooks"]["url"] is None
        server.stop()


async def test_real_checkins_and_reports_arrive_as_events_in_order(nursery, tmp_path):
    from tests.support.mdm_support import command_body, start_mdm_server

    receiver = Receiver(port=free_port())
    async with Running(receiver):
        mdm = await start_mdm_server(nursery, tmp_path, webhook={
            "url": f"http://127.0.0.1:{receiver.port}/events", "hmac_key": HMAC_KEY, "retry_initial": 0.05})
        server = mdm.server
        async with mdm.device("E2E-DEVICE-1") as device:
            await device.enroll()  # Authenticate + TokenUpdate
            async with server.api_client() as api:
                answer = await api.put("/v1/enqueue/E2E-DEVICE-1?nopush=1", content=command_body("CMD-E2E-1", "ProfileList"))
                assert answer.status_code == 200
            reply = await device.idle()
            assert reply.command_uuid == "CMD-E2E-1"
            await device.acknowledge("CMD-E2E-1", ProfileList=[])
        await receiver.wait_for(lambda: len(receiver.accepted) >= 4)
        async with server.api_client() as api:
            metrics = (await api.get("/metrics")).text
        server.stop()

    events = [delivery.event for delivery in receiver.accepted]
    assert [event["topic"] for event in events] == ["mdm.Authenticate", "mdm.TokenUpdate", "mdm.Connect", "mdm.Connect"]
    assert all(delivery.signed_with(HMAC_KEY) for delivery in receiver.accepted)
    token_update = events[1]["checkin_event"]
    assert token_update["udid"] == "E2E-DEVICE-1" and token_update["token_update_tally"] == 1
    assert plistlib.loads(base64.b64decode(token_update["raw_payload"]))["MessageType"] == "TokenUpdate"
    idle, ack = events[2]["acknowledge_event"], events[3]["acknowledge_event"]
    assert idle["status"] == "Idle" and "command_uuid" not in idle
    assert ack["status"] == "Acknowledged" and ack["command_uuid"] == "CMD-E2E-1"
    assert plistlib.loads(base64.b64decode(ack["raw_payload"]))["CommandUUID"] == "CMD-E2E-1"

    assert 'mdm_devices{state="active"} 1.0' in metrics
    assert 'mdm_command_results_total{status="Acknowledged"} 1.0' in metrics
    assert "mdm_queue_depth 0.0" in metrics


async def test_https_receiver_with_a_private_ca(tmp_path):
    cert, key = tmp_path / "receiver.crt", tmp_path / "receiver.key"
    await trio.run_process(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                            "-keyout", str(key), "-out", str(cert)], capture_stdout=True, capture_stderr=True)
    receiver = Receiver(port=free_port(), tls=(str(cert), str(key)))
    url = f"https://127.0.0.1:{receiver.port}/hook"
    async with Running(receiver):
        # Not trusted through the system store: delivery fails and says why.
        first_dir = tmp_path / "untrusted"
        first_dir.mkdir()
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, make_config(first_dir, webhook={"url": url, "retry_initial": 0.05}))
            await server.runtime.store.write(_add_events, ["DEV-TLS"], range(1))
            with trio.fail_after(10):
                while (await server.runtime.store.read(outbox.stats))["last_error"] is None:
                    await trio.sleep(0.05)
            error = (await server.runtime.store.read(outbox.stats))["last_error"]
            assert "CERTIFICATE_VERIFY_FAILED" in error or "certificate" in error.lower(), error
            assert receiver.accepted == []
            server.stop()
        # With [webhook] ca_file it is trusted.
        async with trio.open_nursery() as nursery:
            config = make_config(tmp_path, webhook={"url": url, "ca_file": str(cert), "retry_initial": 0.05})
            server = await start_server(nursery, config)
            await server.runtime.store.write(_add_events, ["DEV-TLS"], range(2))
            await receiver.wait_for(lambda: len(receiver.accepted) == 2)
            server.stop()


async def test_a_committed_event_is_delivered_at_once_not_at_the_next_poll(nursery, tmp_path, monkeypatch):
    """The service wakes the worker after a commit that wrote outbox rows; the poll is only a fallback
    (set to a minute here, so an event that waited for it would fail the deadline)."""
    from appliance.webhook import deliver
    from tests.support.mdm_support import start_mdm_server

    monkeypatch.setattr(deliver, "POLL_SECONDS", 60.0)
    receiver = Receiver(port=free_port())
    async with Running(receiver):
        mdm = await start_mdm_server(nursery, tmp_path, webhook={"url": f"http://127.0.0.1:{receiver.port}/"})
        await trio.sleep(0.2)  # the worker has found the outbox empty and sleeps on its (long) poll
        async with mdm.device("WAKE-DEVICE-1") as device:
            await device.enroll()
            await receiver.wait_for(lambda: len(receiver.accepted) >= 2, timeout=10)
            await device.idle()
            await receiver.wait_for(lambda: len(receiver.accepted) >= 3, timeout=10)
        mdm.server.stop()
    assert [d.event["topic"] for d in receiver.accepted] == ["mdm.Authenticate", "mdm.TokenUpdate", "mdm.Connect"]
