"""Device search figures: GET /v1/devices with filters on a seeded fleet, against the real server
(in-process, loopback TLS, real SQLite file), one keep-alive client.

    PYTHONPATH=. .venv/bin/python tests/perf/bench_device_search.py --devices 5000 --rounds 100

The fleet is written with plain SQL: iPads, iPhones and Macs on a spread of OS versions, last seen over
90 days, an inventory row each, 30 installed apps and 4 profiles per device, a static group of 10 % of the
fleet and 10 dynamic groups. Prints, per query, the round trip p50/p99 of a 100-device page and the
total; then the store-side cost of the work that keeps dynamic groups current (creating one, and one
device's answer re-checking every dynamic group). Client and server share the cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.logs import setup_logging  # noqa: E402
from appliance.store import groups  # noqa: E402
from appliance.store.timefmt import now, to_text  # noqa: E402
from tests.support.harness import API_KEY, make_config, start_server  # noqa: E402

MODELS = [("iPad", "iPad13,18", ["16.7.8", "17.4.1", "17.5", "17.6.1", "17.10", "18.0", "18.1"]),
          ("iPhone", "iPhone15,2", ["16.7.8", "17.5.1", "17.6.1", "18.0.1", "18.1"]),
          ("MacBook Air", "Mac14,2", ["13.6.9", "14.4.1", "14.6.1", "15.0", "15.1"]),
          ("iMac", "iMac21,1", ["13.6.9", "14.6.1", "15.1"])]
APPS = [f"com.example.app{n:03d}" for n in range(200)] + ["com.google.Chrome", "us.zoom.xos"]
T0 = "2026-01-01T00:00:00.000000Z"
NOW = "2026-06-01T00:00:00.000000Z"

QUERIES = [
    ("first page, by id (no filter)", {}),
    ('os_version < "17.5" and model_name contains "iPad", sorted by OS', {
        "filter": 'os_version < "17.5" and model_name contains "iPad"', "sort": "os"}),
    ("last_seen < 30d ago, sorted by last seen", {"filter": "last_seen < 30d ago", "sort": "last_seen"}),
    ("text search ?q=SER0012 (substring of 7 columns)", {"q": "SER0012"}),
    ("?group= a static group of 10 %", {"group": "pilot"}),
    ('app = "us.zoom.xos" and supervised = true', {"filter": 'app = "us.zoom.xos" and supervised = true'}),
    ("(os_version >= 17 and battery < 20) or not passcode = true, by name", {
        "filter": "(os_version >= 17 and battery < 20) or not passcode = true", "sort": "name"}),
    ("group = pilot and os_version startswith 17. and name contains lab", {
        "filter": 'group = pilot and os_version startswith "17." and name contains lab'}),
]


def seed(conn, count: int) -> None:
    rng = random.Random(7)
    devices, enrollments, inventory, apps, profiles = [], [], [], [], []
    for n in range(count):
        device = f"{n:08X}-0000-0000-0000-{n:012X}"
        model_name, model, versions = MODELS[n % len(MODELS)]
        os = rng.choice(versions)
        place = rng.choice(["Lab", "Staff", "Library", "Office"])
        devices.append((device, f"SER{n:06d}", model, model_name, model, os, "21A000", f"{place} {model_name} {n}"))
        seen = to_text(now() - timedelta(days=rng.uniform(0, 90)))
        enrollments.append((device, device, int(rng.random() > 0.05), seen))
        inventory.append((device, rng.choice([32.0, 64.0, 256.0, 512.0]), rng.uniform(1, 200),
                          rng.random(), int(model_name != "iMac"), int(rng.random() > 0.1), NOW))
        for app in rng.sample(APPS, 30):
            apps.append((device, app, app.rsplit(".", 1)[-1], "1.0", "100"))
        for p in range(4):
            profiles.append((device, f"org.example.profile{p}", f"Profile {p}"))
    conn.executemany("INSERT INTO devices (id, serial_number, model, model_name, product_name, os_version,"
                     " build_version, device_name, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     [(*row, T0, T0) for row in devices])
    conn.executemany("INSERT INTO enrollments (id, device_id, type, active, token_update_count, enrolled_at,"
                     " last_seen_at, created_at, updated_at) VALUES (?, ?, 'Device', ?, 1, ?, ?, ?, ?)",
                     [(d, e, a, T0, seen, T0, T0) for d, e, a, seen in enrollments])
    conn.executemany("INSERT INTO device_inventory (device_id, device_capacity, available_capacity, battery_level,"
                     " supervised, passcode_present, inventory_at) VALUES (?, ?, ?, ?, ?, ?, ?)", inventory)
    conn.executemany("INSERT INTO device_applications (device_id, identifier, name, short_version, version)"
                     " VALUES (?, ?, ?, ?, ?)", apps)
    conn.executemany("INSERT INTO device_profiles (device_id, identifier, display_name) VALUES (?, ?, ?)", profiles)


def make_groups(conn, count: int) -> None:
    groups.create(conn, "pilot", filter_text=None, description=None, now=T0)
    ids = [row[0] for row in conn.execute("SELECT id FROM devices WHERE rowid % 10 = 0")]
    groups.add_members(conn, "pilot", ids, T0)
    for n in range(10):
        major = 15 + n % 4
        text = f'os_version < "{major}.{n}" and capacity >= {32 * (1 + n % 3)}'
        groups.create(conn, f"dynamic-{n}", filter_text=text, description=None, now=T0)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def run_queries(server, rounds: int) -> list[tuple[str, float, float, int]]:
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=server.ssl_context(), timeout=120)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    figures = []
    try:
        for label, params in QUERIES:
            times, total = [], 0
            for _ in range(rounds):
                path = "/v1/devices?" + urlencode({**params, "limit": 100})
                started = time.perf_counter()
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                data = response.read()
                times.append(time.perf_counter() - started)
                assert response.status == 200, (response.status, data[:300])
                total = json.loads(data)["total"]
            figures.append((label, statistics.median(times), _percentile(times, 0.99), total))
        # A deep page: the 20th page of the first filtered query, by keyset.
        params = dict(QUERIES[1][1], limit=100)
        cursor, times = None, []
        for _ in range(20):
            started = time.perf_counter()
            connection.request("GET", "/v1/devices?" + urlencode({**params, **({"cursor": cursor} if cursor else {})}),
                               headers=headers)
            page = json.loads(connection.getresponse().read())
            times.append(time.perf_counter() - started)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        figures.append((f"page {len(times)} of that filter (keyset), each page", statistics.median(times),
                        max(times), page["total"]))
    finally:
        connection.close()
    return figures


async def group_upkeep(server) -> tuple[float, float]:
    """Creating a dynamic group over the fleet, and one device's re-check of every dynamic group."""
    def create(conn):
        started = time.perf_counter()
        groups.create(conn, "bench-new", filter_text='os_version < "18.0" and model_name contains "iPad"',
                      description=None, now=NOW)
        return time.perf_counter() - started

    def recheck(conn):
        device = conn.execute("SELECT id FROM devices LIMIT 1 OFFSET 17").fetchone()[0]
        started = time.perf_counter()
        for _ in range(50):
            groups.refresh_device(conn, device, NOW)
        return (time.perf_counter() - started) / 50

    return await server.runtime.store.write(create), await server.runtime.store.write(recheck)


async def main(devices: int, rounds: int) -> None:
    setup_logging("warning")
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, make_config(Path(tmp)))
            started = time.perf_counter()
            await server.runtime.store.write(lambda conn: seed(conn, devices))
            await server.runtime.store.write(lambda conn: make_groups(conn, devices))
            print(f"{devices} devices seeded in {time.perf_counter() - started:.1f} s "
                  f"({devices * 30} app rows, {devices * 4} profile rows, 11 groups)")
            figures = await trio.to_thread.run_sync(run_queries, server, rounds)
            print(f"\n| Query (page of 100, {rounds} rounds) | p50 | p99 | matching |")
            print("|---|---|---|---|")
            for label, p50, p99, total in figures:
                print(f"| {label} | {p50 * 1000:.1f} ms | {p99 * 1000:.1f} ms | {total} |")
            create, recheck = await group_upkeep(server)
            print(f"\ncreating a dynamic group over {devices} devices: {create * 1000:.0f} ms; "
                  f"one device re-checked against 11 dynamic groups (after an inventory answer): "
                  f"{recheck * 1000:.2f} ms")
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    trio.run(main, args.devices, args.rounds)
