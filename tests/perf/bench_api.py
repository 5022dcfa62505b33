"""Admin API and webhook figures on the real server (in-process, loopback TLS, real SQLite file).

    PYTHONPATH=. /work/venv/bin/python tests/perf/bench_api.py [--devices 10000] [--events 5000]

Prints: enqueue of one command to N ids (raw PUT with the ids in the path without and with pushes, and
JSON POST), median of 5 (pushes: handed to the push scheduler, which works on them concurrently; with no
push certificate here it fails each one and records that); enqueue to 1 and 1,000 ids whose pushes the
answer waits for (apns-id per id), against the APNs stand-in (tests/support/apns_standin.py, HTTP/2 + TLS);
walking all devices in pages of 1000; webhook delivery rate from the outbox to a local receiver.
Client and server share the cores, so figures are conservative.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.logs import setup_logging  # noqa: E402
from appliance.store import outbox  # noqa: E402
from appliance.webhook.events import acknowledge_event  # noqa: E402
from tests.support.apns_certs import make_ca, make_push_cert, make_server  # noqa: E402
from tests.support.apns_standin import StandIn  # noqa: E402
from tests.support.fleet_seed import command_plist, seed_devices  # noqa: E402
from tests.support.harness import API_KEY, free_port, make_config, start_server  # noqa: E402
from tests.support.webhook_receiver import Receiver, Running  # noqa: E402


def _request(server, method: str, path: str, body: bytes, content_type: str) -> tuple[int, bytes, float]:
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=server.ssl_context(), timeout=120)
    try:
        started = time.perf_counter()
        connection.request(method, path, body=body,
                           headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": content_type})
        response = connection.getresponse()
        data = response.read()
        return response.status, data, time.perf_counter() - started
    finally:
        connection.close()


async def main(devices: int, events: int) -> None:
    setup_logging("warning")
    with tempfile.TemporaryDirectory() as tmp:
        receiver = Receiver(port=free_port())
        config = make_config(Path(tmp), webhook={"url": f"http://127.0.0.1:{receiver.port}/", "retry_initial": 0.05})
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, config)
            ids = await server.runtime.store.write(lambda conn: seed_devices(conn, devices))

            quiet = []
            for _ in range(5):
                _, body = command_plist("DeviceInformation", Queries=["OSVersion"])
                status, _, elapsed = await trio.to_thread.run_sync(
                    _request, server, "PUT", "/v1/enqueue/" + ",".join(ids) + "?nopush=1", body, "application/xml")
                assert status == 200, status
                quiet.append(elapsed)
            print(f"enqueue to {devices} ids, PUT /v1/enqueue?nopush=1:    median {statistics.median(quiet) * 1000:.0f} ms "
                  f"(min {min(quiet) * 1000:.0f}, max {max(quiet) * 1000:.0f})")
            raw, posted = [], []
            for _ in range(5):
                _, body = command_plist("DeviceInformation", Queries=["OSVersion"])
                status, _, elapsed = await trio.to_thread.run_sync(
                    _request, server, "PUT", "/v1/enqueue/" + ",".join(ids), body, "application/xml")
                assert status == 200, status
                raw.append(elapsed)
                payload = json.dumps({"enrollment_ids": ids, "command": {"RequestType": "ProfileList"}}).encode()
                status, _, elapsed = await trio.to_thread.run_sync(
                    _request, server, "POST", "/v1/commands", payload, "application/json")
                assert status == 200, status
                posted.append(elapsed)
            print(f"enqueue to {devices} ids, PUT /v1/enqueue (raw plist): median {statistics.median(raw) * 1000:.0f} ms "
                  f"(min {min(raw) * 1000:.0f}, max {max(raw) * 1000:.0f})")
            print(f"enqueue to {devices} ids, POST /v1/commands (JSON):   median {statistics.median(posted) * 1000:.0f} ms "
                  f"(min {min(posted) * 1000:.0f}, max {max(posted) * 1000:.0f})")

            started = time.perf_counter()
            async with server.api_client() as api:
                cursor, seen = None, 0
                while True:
                    page = (await api.get("/v1/devices", params={"limit": 1000} | ({"cursor": cursor} if cursor else {}))).json()
                    seen += len(page["devices"])
                    cursor = page["next_cursor"]
                    if cursor is None:
                        break
            print(f"GET /v1/devices, all {seen} in pages of 1000 (each with pending counts over "
                  f"{10 * devices} queue rows): {(time.perf_counter() - started) * 1000:.0f} ms")

            def add(conn) -> None:
                for n in range(events):
                    eid = ids[n % len(ids)]
                    topic, body = acknowledge_event(udid=eid, enrollment_id="", status="Idle", command_uuid=None,
                                                    raw=b"x" * 600, url_params=None, ids={"id": eid, "type": "Device"})
                    outbox.add(conn, enrollment_id=eid, topic=topic, body=body)

            async with Running(receiver):
                started = time.perf_counter()
                await server.runtime.store.write(add)
                server.runtime.webhooks.wake()
                await receiver.wait_for(lambda: len(receiver.accepted) >= events, timeout=600)
                elapsed = time.perf_counter() - started
            print(f"webhook delivery of {events} events ({min(events, devices)} enrollments) to a local receiver: "
                  f"{elapsed:.2f} s, {events / elapsed:.0f} events/s")
            server.stop()


async def answered_pushes() -> None:
    """Enqueue whose answer carries each push's apns-id (up to 1,000 ids), against the APNs stand-in."""
    server_ca, push_ca = make_ca("Bench APNs server CA"), make_ca("Bench push CA")
    identity = make_server(server_ca)
    with tempfile.TemporaryDirectory() as tmp:
        ca_file = Path(tmp) / "apns-ca.pem"
        ca_file.write_bytes(server_ca.cert_pem)
        standin = StandIn.create(identity.cert_pem, identity.key_pem, push_ca.cert_pem, record=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(standin.serve)
            server = await start_server(nursery, make_config(Path(tmp), apns={"url": standin.url,
                                                                             "ca_file": str(ca_file)}))
            cert = make_push_cert(push_ca)
            async with server.api_client() as api:
                assert (await api.put("/v1/pushcert", content=cert.cert_pem + cert.key_pem)).status_code == 200
            ids = await server.runtime.store.write(lambda conn: seed_devices(conn, 1000))
            for count, rounds in ((1, 50), (1000, 5)):
                timings = []
                for _ in range(rounds):
                    _, body = command_plist("DeviceInformation", Queries=["OSVersion"])
                    status, data, elapsed = await trio.to_thread.run_sync(
                        _request, server, "PUT", "/v1/enqueue/" + ",".join(ids[:count]), body, "application/xml")
                    answer = json.loads(data)["status"]
                    assert status == 200 and all(e["push_result"] != "scheduled" for e in answer.values()), data[:300]
                    timings.append(elapsed)
                print(f"enqueue to {count} ids, pushes answered (apns-id each):  median "
                      f"{statistics.median(timings) * 1000:.1f} ms (min {min(timings) * 1000:.1f}, "
                      f"max {max(timings) * 1000:.1f}, {rounds} rounds)")
            server.stop()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=5_000)
    args = parser.parse_args()
    trio.run(main, args.devices, args.events)
    trio.run(answered_pushes)
