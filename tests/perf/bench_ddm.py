"""Declarative Device Management figures against `python -m appliance serve` in a child process.

Fleet (default): a set assigned to N enrolled enrollments; a declaration in it changes (PUT over the admin
API); time until every enrollment has its DeclarativeManagement command queued (notified) and until every
push was handed to APNs and its answer recorded. APNs is the h2 stand-in (tests/support/apns_standin.py)
in a third process. Three rounds: the first command to each, a change while those still wait (the
waiting command gets the new tokens: no second command), and a change after the devices took theirs.

    PYTHONPATH=. .venv/bin/python tests/perf/bench_ddm.py --fleet 5000

Sync (--devices N): N simulated devices (enrolled for real, Mdm-Signature on every request) ask for
`tokens` and `declaration-items` over and over for --seconds; prints requests/s and p50/p99 per endpoint.

    PYTHONPATH=. .venv/bin/python tests/perf/bench_ddm.py --devices 50 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.config import load_config  # noqa: E402
from tests.perf.bench_apns import start_server as start_apns  # noqa: E402
from tests.perf.bench_mdm import own_cpu_seconds, process_cpu_seconds  # noqa: E402
from tests.support.apns_certs import make_ca, make_push_cert, make_server  # noqa: E402
from tests.support.device_sim import DeviceSim, TestCA, client_context  # noqa: E402
from tests.support.harness import API_KEY, free_port, make_config  # noqa: E402
from tests.support.mdm_support import ServerProcess  # noqa: E402

API = "/api/v1/ddm"
T0 = "2026-01-01T00:00:00.000000Z"


def declaration(identifier: str, echo: str) -> bytes:
    return json.dumps({"Type": "com.apple.configuration.management.test", "Identifier": identifier,
                       "Payload": {"Echo": echo}}).encode()


def api(base_url: str, ca_file: Path) -> httpx.Client:
    return httpx.Client(base_url=base_url, verify=str(ca_file), timeout=300,
                        headers={"Authorization": f"Bearer {API_KEY}"})


def setup_set(client: httpx.Client, size: int) -> None:
    for n in range(size):
        assert client.put(f"{API}/declarations", content=declaration(f"cfg.{n}", "v0")).status_code == 204
        assert client.put(f"{API}/set-declarations/fleet", params={"declaration": f"cfg.{n}"}).status_code == 204
    activation = {"Type": "com.apple.activation.simple", "Identifier": "act.fleet",
                  "Payload": {"StandardConfigurations": [f"cfg.{n}" for n in range(size)]}}
    assert client.put(f"{API}/declarations", content=json.dumps(activation)).status_code == 204
    assert client.put(f"{API}/set-declarations/fleet", params={"declaration": "act.fleet"}).status_code == 204


def seed_fleet(db: Path, count: int) -> list[str]:
    """count enrolled enrollments (distinct push tokens), the set assigned to each (setup, not measured)."""
    ids = [f"FLEET-{n:06d}" for n in range(count)]
    with sqlite3.connect(db, timeout=30) as conn:
        conn.executemany("INSERT INTO devices (id, created_at, updated_at) VALUES (?, ?, ?)", [(i, T0, T0) for i in ids])
        conn.executemany(
            "INSERT INTO enrollments (id, device_id, type, topic, push_magic, token, token_update_count, active, "
            "enrolled_at, created_at, updated_at) VALUES (?, ?, 'Device', 't', ?, ?, 1, 1, ?, ?, ?)",
            [(i, i, f"magic-{n}", (n + 1).to_bytes(32, "big"), T0, T0, T0) for n, i in enumerate(ids)])
        conn.executemany("INSERT INTO ddm_enrollment_sets (enrollment_id, set_name, created_at) VALUES (?, 'fleet', ?)",
                         [(i, T0) for i in ids])
    return ids


def progress(db: Path, since: str) -> tuple[int, int]:
    """(enrollments notified since, enrollments whose push outcome was recorded since)."""
    with sqlite3.connect(db, timeout=30) as conn:
        notified = conn.execute("SELECT count(*) FROM ddm_enrollments WHERE notified_at > ?", (since,)).fetchone()[0]
        pushed = conn.execute("SELECT count(*) FROM enrollments WHERE last_push_at > ?", (since,)).fetchone()[0]
    return notified, pushed


def now_text(db: Path) -> str:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')").fetchone()[0]


def fleet(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-ddm-"))
    apns_process = server = None
    try:
        server_ca, push_ca = make_ca("bench APNs CA"), make_ca("bench push CA")
        apns_identity, push = make_server(server_ca), make_push_cert(push_ca, rsa_key=True)
        for name, data in {"server-ca.pem": server_ca.cert_pem, "server.pem": apns_identity.cert_pem,
                           "server.key": apns_identity.key_pem, "push-ca.pem": push_ca.cert_pem}.items():
            (work / name).write_bytes(data)
        apns_process, apns_port = start_apns("standin", work)
        port = free_port()
        config_path = make_config(work, port=port, logging={"level": "warning"},
                                  apns={"url": f"https://localhost:{apns_port}", "ca_file": str(work / "server-ca.pem")})
        config = load_config(config_path)
        server = ServerProcess(config_path, port, work / "server.log")
        trio.run(server.start)
        db = config.data_dir / "appliance.db"
        with api(server.base_url, config.data_dir / "ca.crt") as client:
            assert client.put("/v1/pushcert", content=push.cert_pem + push.key_pem).status_code == 200
            setup_set(client, args.declarations)
            ids = seed_fleet(db, args.fleet)
            rounds = [("first command to each", None), ("change while those wait", None),
                      ("change after devices took theirs", "clear")]
            print(f"fleet={len(ids)} declarations_in_set={args.declarations + 1} cores={os.cpu_count()} "
                  f"load_average_1min={os.getloadavg()[0]:.2f}")
            for number, (label, before) in enumerate(rounds):
                if before == "clear":  # as if every device had fetched and acknowledged its command
                    with sqlite3.connect(db, timeout=30) as conn:
                        conn.execute("DELETE FROM queue")
                since = now_text(db)
                cpu0 = process_cpu_seconds(server.process.pid)
                started = time.perf_counter()
                answer = client.put(f"{API}/declarations", content=declaration("cfg.0", f"v{number + 1}"))
                assert answer.status_code == 204, answer.text
                api_ms = (time.perf_counter() - started) * 1000
                queued_at = pushed_at = None
                while pushed_at is None:
                    notified, pushed = progress(db, since)
                    elapsed = time.perf_counter() - started
                    if queued_at is None and notified >= len(ids):
                        queued_at = elapsed
                    if pushed >= len(ids):
                        pushed_at = elapsed
                    if elapsed > 300:
                        raise RuntimeError(f"stuck: {notified} notified, {pushed} pushed")
                    time.sleep(0.01)
                cpu = process_cpu_seconds(server.process.pid) - cpu0
                with sqlite3.connect(db, timeout=30) as conn:
                    waiting = conn.execute("SELECT count(*) FROM queue q JOIN commands c ON c.uuid = q.command_uuid "
                                           "WHERE c.request_type = 'DeclarativeManagement'").fetchone()[0]
                print(f"round {number + 1} ({label}): API answered {api_ms:.0f} ms; all {len(ids)} commands queued "
                      f"after {queued_at:.2f} s; all pushes answered by APNs and recorded after {pushed_at:.2f} s; "
                      f"DeclarativeManagement commands waiting: {waiting}; server CPU {cpu:.2f} s")
    finally:
        if server is not None:
            server.stop()
        if apns_process is not None:
            apns_process.terminate()
            apns_process.wait(10)
        shutil.rmtree(work, ignore_errors=True)


async def sync(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-ddm-sync-"))
    try:
        ca = TestCA(directory=work)
        port = free_port()
        config_path = make_config(work, port=port, identity={"trusted_ca_files": [str(ca.pem_path)]},
                                  logging={"level": "warning"})
        config = load_config(config_path)
        profile = ("-m", "cProfile", "-o", args.profile) if args.profile else ()
        server = ServerProcess(config_path, port, work / "server.log", profile)
        await server.start()
        try:
            devices = []
            for n in range(args.devices):
                cert, key = ca.issue(f"SYNC-{n:05d}")
                devices.append(DeviceSim(server.base_url, client_context(config.data_dir / "ca.crt"), cert, key,
                                         f"SYNC-{n:05d}"))
            async with trio.open_nursery() as nursery:
                for device in devices:
                    nursery.start_soon(device.enroll)
            with api(server.base_url, config.data_dir / "ca.crt") as client:
                await trio.to_thread.run_sync(setup_set, client, args.declarations)
                for device in devices:
                    assert client.put(f"{API}/enrollment-sets/{device.udid}", params={"set": "fleet"}).status_code == 204
            results: dict[str, list[float]] = {"tokens": [], "declaration-items": []}
            errors = [0]
            measuring, stop = [False], trio.Event()

            async def loop(device: DeviceSim) -> None:
                endpoint = "tokens"
                while not stop.is_set():
                    started = time.perf_counter()
                    reply = await device.checkin("DeclarativeManagement", Endpoint=endpoint)
                    if reply.status != 200:
                        errors[0] += 1
                    elif measuring[0]:
                        results[endpoint].append(time.perf_counter() - started)
                    endpoint = "declaration-items" if endpoint == "tokens" else "tokens"

            async with trio.open_nursery() as nursery:
                for device in devices:
                    nursery.start_soon(loop, device)
                await trio.sleep(args.warmup)
                cpu0, client0, load0 = process_cpu_seconds(server.process.pid), own_cpu_seconds(), os.getloadavg()[0]
                wall0 = time.perf_counter()
                measuring[0] = True
                await trio.sleep(args.seconds)
                measuring[0] = False
                wall = time.perf_counter() - wall0
                cpu, client_cpu = process_cpu_seconds(server.process.pid) - cpu0, own_cpu_seconds() - client0
                stop.set()
            for device in devices:
                await device.aclose()
        finally:
            server.stop()
        total = sum(len(v) for v in results.values())
        print(f"devices={args.devices} declarations_per_device={args.declarations + 1 + 4} seconds={wall:.1f} "
              f"cores={os.cpu_count()} load_average_1min={load0:.2f} errors={errors[0]}")
        for endpoint, samples in results.items():
            q = statistics.quantiles(samples, n=100)
            print(f"{endpoint}: {len(samples) / wall:.0f} requests/s p50={q[49] * 1000:.1f} ms "
                  f"p99={q[98] * 1000:.1f} ms max={max(samples) * 1000:.1f} ms")
        print(f"all: {total / wall:.0f} requests/s; server CPU per request {cpu / total * 1e6:.0f} us; "
              f"server_cpu_util={cpu / wall:.2f} client_cpu_util={client_cpu / wall:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fleet", type=int, default=5000, help="enrollments the set is assigned to")
    parser.add_argument("--devices", type=int, default=0, help="instead: N devices syncing (tokens, items)")
    parser.add_argument("--declarations", type=int, default=10, help="configurations in the set (+ an activation)")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--profile", metavar="FILE", help="--devices: run the server under cProfile, stats to FILE")
    args = parser.parse_args()
    if args.devices:
        trio.run(sync, args)
    else:
        fleet(args)


if __name__ == "__main__":
    main()
