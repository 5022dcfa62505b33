"""Benchmark: one command enqueued to N enrolled devices, until every device's push is answered.

The real appliance (in-process, real SQLite file, loopback TLS) pushes through one HTTP/2 connection to
nginx (http2 + ssl_verify_client on, in its own process) standing in for APNs. Measures the whole
path: the enqueue request, the coalesced pushes, and the outcome written on every enrollment.

    PYTHONPATH=. /work/venv/bin/python tests/perf/bench_push_fleet.py --devices 10000 --rounds 3

--latency N: instead, enqueue N commands one after the other to one enrolled device and print how long
from sending the enqueue request until the push reaches an in-process h2 stand-in (p50/p99).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.logs import setup_logging  # noqa: E402
from tests.support.apns_certs import make_ca, make_push_cert, make_server  # noqa: E402
from tests.support.apns_standin import StandIn  # noqa: E402
from tests.support.harness import API_KEY, make_config, start_server  # noqa: E402
from tests.perf.bench_apns import start_server as start_apns  # noqa: E402

T0 = "2026-01-01T00:00:00.000000Z"


def seed(conn, count: int) -> list[str]:
    ids = [str(uuid.UUID(int=i + 1)).upper() for i in range(count)]
    conn.executemany("INSERT INTO devices (id, created_at, updated_at) VALUES (?, ?, ?)",
                     [(i, T0, T0) for i in ids])
    conn.executemany(
        "INSERT INTO enrollments (id, device_id, type, topic, push_magic, token, token_update_count, active, "
        "enrolled_at, created_at, updated_at) VALUES (?, ?, 'Device', 't', ?, ?, 1, 1, ?, ?, ?)",
        [(i, i, f"magic-{n}", n.to_bytes(32, "big"), T0, T0, T0) for n, i in enumerate(ids)])
    return ids


def request(port: int, context, method: str, path: str, body: bytes) -> tuple[int, float]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=300)
    try:
        started = time.perf_counter()
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {API_KEY}"})
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        conn.close()


def command(n: int) -> bytes:
    import plistlib

    return plistlib.dumps({"CommandUUID": f"BENCH-{n}-{uuid.uuid4()}",
                           "Command": {"RequestType": "DeviceInformation", "Queries": ["OSVersion"]}})


async def main(devices: int, rounds: int) -> None:
    setup_logging("warning")
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        d = Path(tmp)
        server_ca, push_ca = make_ca("bench server CA"), make_ca("bench push CA")
        server_id, push = make_server(server_ca), make_push_cert(push_ca, rsa_key=True)
        for name, data in {"server-ca.pem": server_ca.cert_pem, "server.pem": server_id.cert_pem,
                           "server.key": server_id.key_pem, "push-ca.pem": push_ca.cert_pem}.items():
            (d / name).write_bytes(data)
        nginx, port = start_apns("nginx", d)
        try:
            config = make_config(d, apns={"url": f"https://localhost:{port}",
                                          "ca_file": str(d / "server-ca.pem")})
            async with trio.open_nursery() as nursery:
                server = await start_server(nursery, config)
                ids = await server.runtime.store.write(seed, devices)
                ctx = server.ssl_context()
                status, _ = await trio.to_thread.run_sync(
                    request, server.port, ctx, "PUT", "/v1/pushcert", push.cert_pem + push.key_pem)
                assert status == 200, status
                totals = []
                for r in range(rounds):
                    before = await server.runtime.store.read(
                        lambda c: c.execute("SELECT max(last_push_at) FROM enrollments").fetchone()[0] or "")
                    started = time.perf_counter()
                    status, api = await trio.to_thread.run_sync(
                        request, server.port, ctx, "PUT", "/v1/enqueue/" + ",".join(ids), command(r))
                    assert status == 200, status
                    while True:
                        done = await server.runtime.store.read(
                            lambda c: c.execute("SELECT count(*), sum(last_push_result = 'ok') FROM enrollments "
                                                "WHERE last_push_at > ?", (before,)).fetchone())
                        if done[0] >= devices:
                            break
                        await trio.sleep(0.02)
                    total = time.perf_counter() - started
                    totals.append(total)
                    print(f"  round {r}: enqueue answered in {api * 1000:.0f} ms; all {devices} pushes answered "
                          f"and recorded after {total:.2f} s ({devices / total:.0f} pushes/s, {done[1]} ok)")
                print(f"median: {statistics.median(totals):.2f} s for {devices} devices "
                      f"({devices / statistics.median(totals):.0f} pushes/s)")
                server.stop()
        finally:
            nginx.terminate()
            nginx.wait(10)


async def latency(count: int) -> None:
    import httpx

    setup_logging("warning")
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        d = Path(tmp)
        server_ca, push_ca = make_ca("bench server CA"), make_ca("bench push CA")
        server_id, push = make_server(server_ca), make_push_cert(push_ca)
        (d / "server-ca.pem").write_bytes(server_ca.cert_pem)
        standin = StandIn.create(server_id.cert_pem, server_id.key_pem, push_ca.cert_pem)
        async with trio.open_nursery() as nursery:
            await nursery.start(standin.serve)
            config = make_config(d, apns={"url": standin.url, "ca_file": str(d / "server-ca.pem")})
            server = await start_server(nursery, config)
            [eid] = await server.runtime.store.write(seed, 1)
            samples = []
            async with server.api_client() as api:
                assert (await api.put("/v1/pushcert", content=push.cert_pem + push.key_pem)).status_code == 200
                for n in range(count + 20):
                    seen = len(standin.requests)
                    started = time.perf_counter()
                    async with trio.open_nursery() as inner:
                        inner.start_soon(partial(api.put, f"/v1/enqueue/{eid}", content=command(n)))
                        while len(standin.requests) == seen:
                            await trio.sleep(0.0002)
                        arrived = time.perf_counter() - started
                    if n >= 20:  # after warm-up
                        samples.append(arrived)
            samples.sort()
            p50, p99 = samples[len(samples) // 2], samples[int(len(samples) * 0.99) - 1]
            print(f"enqueue -> push at APNs stand-in, {count} sequential commands: "
                  f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {samples[-1] * 1000:.1f} ms")
            await server.aclose()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=int, default=0, metavar="N")
    args = parser.parse_args()
    if args.latency:
        trio.run(latency, args.latency)
    else:
        trio.run(main, args.devices, args.rounds)
