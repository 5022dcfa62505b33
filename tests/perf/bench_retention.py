"""Retention on a year of history: database size before and after pruning, how long the pass takes, and
what device round trips and device listings see while it runs, against `python -m appliance serve` in a
child process.

    PYTHONPATH=. .venv/bin/python tests/perf/bench_retention.py --no-idle-pass   # 5,000 devices, 365 days
    PYTHONPATH=. .venv/bin/python tests/perf/bench_retention.py --devices 500 --days 120   # quick look

The history is written with plain SQL into a database the appliance created (as a fleet leaves it):
N devices, each answering one DeviceInformation a day (its own command, ~1.2 KB answer: what the daily
inventory's facts come from), one fleet-wide command a week (alternately InstallProfile, a ~0.4 KB
acknowledgement, and ProfileList, a ~5 KB answer), a weekly DDM status report per device (the newest 10
kept, as [ddm] status_reports_kept does), stray reports from 2 % of the devices; 10 % of the devices left
the fleet half-way through the year. The devices are iPads, iPhones and Macs on a spread of OS versions,
with an inventory row, 30 installed apps and 4 profiles each (as tests/perf/bench_device_search.py seeds
them), last seen within the last day (the leavers: half a year ago). Rows arrive in time order, as they
would.

Before any server runs, the write jobs the pass is made of are timed on that database inside transactions
that are rolled back: deleting a batch of 500 results, of 500 unused command bodies, and one vacuum step.

Then, with 50 simulated devices doing Idle -> command -> Acknowledged sessions over TLS (Mdm-Signature):
1. the server with retention off ([retention] ages 0): device searches with filters (alone, before any
   device traffic), then round trips and device listings, no pruning;
2. the server restarted with the default ages: its first retention pass starts at once; round trips and
   listings are measured while it runs, the same searches once it has finished (alone), then round trips
   and listings again.
Prints sizes (file + WAL, `db stats` rows), the pass's wall time and the server's CPU during it, round
trip p50/p99 and listing p50/p99 in each phase, search p50/p99 per query before and after pruning, the
load average, and the benchmark's own CPU. The simulated devices' own commands and results (--commands
per device before each server run) stay in the database measured after the pass.
"""

from __future__ import annotations

import argparse
import json
import os
import plistlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.store import queue, retention, vacuum  # noqa: E402
from appliance.store.db import connect_sync  # noqa: E402
from appliance.store.timefmt import to_text  # noqa: E402
from tests.perf.bench_device_search import APPS, MODELS, QUERIES  # noqa: E402
from tests.perf.bench_mdm import Tally, device_loop, own_cpu_seconds, process_cpu_seconds  # noqa: E402
from tests.support.device_sim import DeviceSim, TestCA, client_context  # noqa: E402
from tests.support.fleet_seed import seed_devices  # noqa: E402
from tests.support.harness import API_KEY, free_port, make_config  # noqa: E402
from tests.support.mdm_support import ServerProcess, command_body  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OFF = {"results": 0, "stray_reports": 0, "inventory_history": 0, "ddm_status_history": 0}
# The searches timed before and after pruning (labels and parameters from bench_device_search.py).
SEARCHES = [QUERIES[0], QUERIES[1], QUERIES[2], QUERIES[3],
            ('os_version < "17.5" and last_seen < 30d ago', {"filter": 'os_version < "17.5" and last_seen < 30d ago'})]


def _answer(udid: str, uuid: str, request_type: str) -> bytes:
    """A device's answer as plistlib makes it: DeviceInformation ~1.2 KB, ProfileList ~5 KB, else ~0.4 KB."""
    if request_type == "DeviceInformation":
        responses = {"DeviceName": "Office Mac 0421", "OSVersion": "14.4.1", "BuildVersion": "23E224",
                     "ModelName": "MacBook Air", "Model": "Mac14,2", "ProductName": "Mac14,2",
                     "SerialNumber": "C02XL0GHJGH5", "DeviceCapacity": 494.38, "AvailableDeviceCapacity": 301.2,
                     "BatteryLevel": 0.87, "IsSupervised": True, "IsActivationLockEnabled": False,
                     "IsCloudBackupEnabled": False, "UDID": udid, "WiFiMAC": "a4:83:e7:12:34:56",
                     "BluetoothMAC": "a4:83:e7:12:34:57", "EthernetMACs": ["a4:83:e7:12:34:58"],
                     "LocalHostName": "office-mac-0421", "HostName": "office-mac-0421.example.org",
                     "SupplementalBuildVersion": "23E224", "SystemIntegrityProtectionEnabled": True,
                     "IsMDMLostModeEnabled": False, "AwaitingConfiguration": False}
        body = {"UDID": udid, "CommandUUID": uuid, "Status": "Acknowledged", "QueryResponses": responses}
    elif request_type == "ProfileList":
        profiles = [{"PayloadIdentifier": f"org.example.profile.{n}", "PayloadDisplayName": f"Profile {n}",
                     "PayloadUUID": f"00000000-0000-4000-8000-{n:012d}", "PayloadVersion": 1,
                     "PayloadOrganization": "Example Org", "IsManaged": True, "HasRemovalPasscode": False,
                     "IsEncrypted": False, "PayloadContent": [{"PayloadType": "com.apple.wifi.managed",
                                                               "PayloadIdentifier": f"org.example.wifi.{n}"}]}
                    for n in range(12)]
        body = {"UDID": udid, "CommandUUID": uuid, "Status": "Acknowledged", "ProfileList": profiles}
    else:
        body = {"UDID": udid, "CommandUUID": uuid, "Status": "Acknowledged"}
    return plistlib.dumps(body)


def seed_history(path: Path, devices: int, days: int, now: datetime) -> dict:
    """Write the fleet and its history; returns what was written."""
    conn = connect_sync(path)  # creates the database as the appliance does (incremental vacuum, migrations)
    rng = random.Random(7)
    started, cpu = time.perf_counter(), time.process_time()
    conn.execute("BEGIN")
    ids = seed_devices(conn, devices)
    conn.execute("COMMIT")
    retired = set(ids[: devices // 10])
    strays = ids[devices // 10: devices // 10 + max(1, devices // 50)]
    conn.execute("BEGIN")
    describe_fleet(conn, ids, retired, now, days, rng)
    conn.execute("COMMIT")
    counts = {"results": 0, "commands": 0, "ddm_status_reports": 0, "stray_reports": 0}
    # One template per kind, its UUID swapped per row: the bytes are those plistlib made.
    di_uuid = "00000000-DAY0-4000-8000-000000000000"
    templates = {kind: _answer("UDID-TEMPLATE-0000000000000000000", di_uuid, kind)
                 for kind in ("DeviceInformation", "ProfileList", "InstallProfile")}
    di_command = command_body(di_uuid, "DeviceInformation", Queries=[
        "DeviceName", "OSVersion", "BuildVersion", "ModelName", "Model", "ProductName", "SerialNumber",
        "DeviceCapacity", "AvailableDeviceCapacity", "BatteryLevel", "IsSupervised", "IsActivationLockEnabled",
        "WiFiMAC", "BluetoothMAC", "LocalHostName", "HostName"])
    status_report = json.dumps({"StatusItems": {"management": {"declarations": {
        "activations": [{"identifier": f"act.{n}", "active": True, "valid": "valid", "server-token": "t" * 40}
                        for n in range(4)],
        "configurations": [{"identifier": f"cfg.{n}", "active": True, "valid": "valid", "server-token": "t" * 40}
                           for n in range(8)]}}}, "Errors": [], "FullReport": True}).encode()

    def at(day: int, device_index: int) -> str:
        moment = now - timedelta(days=days - day) + timedelta(seconds=device_index * 7 % 86400)
        return to_text(moment)

    for day in range(days):
        conn.execute("BEGIN")
        commands, results = [], []
        for index, udid in enumerate(ids):
            if udid in retired and day >= days // 2:
                continue
            uuid = f"{day:08X}-DAY0-4000-8000-{index:012X}"
            moment = at(day, index)
            commands.append((uuid, "DeviceInformation", di_command.replace(di_uuid.encode(), uuid.encode()), moment))
            results.append((udid, uuid, "Acknowledged",
                            templates["DeviceInformation"].replace(di_uuid.encode(), uuid.encode()), moment, moment))
        if day % 7 == 3:
            kind = "ProfileList" if (day // 7) % 2 else "InstallProfile"
            uuid = f"{day:08X}-WEEK-4000-8000-000000000000"
            commands.append((uuid, kind, command_body(uuid, kind), at(day, 0)))
            for index, udid in enumerate(ids):
                if udid in retired and day >= days // 2:
                    continue
                moment = at(day, index + 1)
                results.append((udid, uuid, "Acknowledged", templates[kind], at(day, 0), moment))
        conn.executemany("INSERT INTO commands (uuid, request_type, body, created_at) VALUES (?, ?, ?, ?)", commands)
        conn.executemany("INSERT INTO results (enrollment_id, command_uuid, status, raw, queued_at, received_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", results)
        counts["commands"] += len(commands)
        counts["results"] += len(results)
        if day % 7 == 5:
            reports = []
            for index, udid in enumerate(ids):
                if udid in retired and day >= days // 2:
                    continue
                reports.append((udid, f"{udid}-{day}", status_report, at(day, index)))
            conn.executemany("INSERT INTO ddm_status_reports (enrollment_id, report_id, raw, received_at) "
                             "VALUES (?, ?, ?, ?)", reports)
            counts["ddm_status_reports"] += len(reports)
            # The newest status_reports_kept (10) per enrollment, as the appliance keeps them.
            conn.execute("DELETE FROM ddm_status_reports WHERE id IN (SELECT id FROM (SELECT id, row_number() OVER "
                         "(PARTITION BY enrollment_id ORDER BY id DESC) AS n FROM ddm_status_reports) WHERE n > 10)")
        for udid in strays:
            if rng.random() < 20 / days:
                conn.execute("INSERT INTO stray_reports (enrollment_id, command_uuid, status, raw, received_at) "
                             "VALUES (?, ?, 'Acknowledged', ?, ?)",
                             (udid, f"STRAY-{day}-{udid}", templates["InstallProfile"], at(day, 0)))
                counts["stray_reports"] += 1
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    counts["ddm_status_reports"] = conn.execute("SELECT count(*) FROM ddm_status_reports").fetchone()[0]
    conn.close()
    counts["seed_seconds"] = round(time.perf_counter() - started, 1)
    counts["seed_cpu_seconds"] = round(time.process_time() - cpu, 1)
    return counts


def describe_fleet(conn, ids: list[str], retired: set[str], now: datetime, days: int, rng: random.Random) -> None:
    """What device search looks at: model, OS, name, last seen, an inventory row, 30 apps, 4 profiles."""
    devices, seen, inventory, apps, profiles = [], [], [], [], []
    for n, device in enumerate(ids):
        model_name, model, versions = MODELS[n % len(MODELS)]
        place = rng.choice(["Lab", "Staff", "Library", "Office"])
        devices.append((model, model_name, model, rng.choice(versions), f"{place} {model_name} {n}", device))
        last = now - timedelta(days=days / 2 if device in retired else rng.uniform(0, 1))
        seen.append((0 if device in retired else 1, to_text(last), device))
        inventory.append((device, rng.choice([32.0, 64.0, 256.0, 512.0]), rng.uniform(1, 200), rng.random(),
                          int(model_name != "iMac"), int(rng.random() > 0.1), to_text(last)))
        apps += [(device, app, app.rsplit(".", 1)[-1], "1.0", "100") for app in rng.sample(APPS, 30)]
        profiles += [(device, f"org.example.profile{p}", f"Profile {p}") for p in range(4)]
    conn.executemany("UPDATE devices SET model = ?, model_name = ?, product_name = ?, os_version = ?, device_name = ?"
                     " WHERE id = ?", devices)
    conn.executemany("UPDATE enrollments SET active = ?, last_seen_at = ? WHERE id = ?", seen)
    conn.executemany("INSERT INTO device_inventory (device_id, device_capacity, available_capacity, battery_level,"
                     " supervised, passcode_present, inventory_at) VALUES (?, ?, ?, ?, ?, ?, ?)", inventory)
    conn.executemany("INSERT INTO device_applications (device_id, identifier, name, short_version, version)"
                     " VALUES (?, ?, ?, ?, ?)", apps)
    conn.executemany("INSERT INTO device_profiles (device_id, identifier, display_name) VALUES (?, ?, ?)", profiles)


def batch_seconds(db_path: Path, now: datetime, batches: int = 20) -> dict:
    """How long the pass's write jobs take on this database, in one transaction that is rolled back (the
    commit comes on top): `batches` deletions of BATCH results, then (once more results have gone, as in
    the pass) of BATCH unused command bodies, and of VACUUM_STEP free pages. p50 and max in ms per kind."""
    from appliance.service.retention import BATCH, VACUUM_STEP

    cutoff = to_text(now - timedelta(days=90))
    rule = next(rule for rule in retention.AGE_RULES if rule.table == "results")
    conn = connect_sync(db_path)
    figures = {}

    def timed(kind: str, jobs) -> None:
        times = []
        for job in jobs:
            started = time.perf_counter()
            job()
            times.append(time.perf_counter() - started)
        figures[kind] = {"p50_ms": round(statistics.median(times) * 1000, 1), "max_ms": round(max(times) * 1000, 1),
                         "jobs": len(times)}

    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            timed(f"{BATCH} results", [lambda: retention.prune_older(conn, rule, cutoff, BATCH)] * batches)
            for _ in range(batches * 3):
                retention.prune_older(conn, rule, cutoff, BATCH)
            found, after = [], None
            while len(found) < batches:  # the read that finds them is not a write job: not timed
                unused, after = retention.unused_commands(conn, cutoff, after, BATCH)
                if unused:
                    found.append(unused)
                if after is None:
                    break
            timed(f"{BATCH} command bodies", [lambda chunk=chunk: retention.delete_commands(conn, chunk)
                                              for chunk in found])
            timed(f"vacuum step ({VACUUM_STEP} pages)", [lambda: vacuum.release(conn, VACUUM_STEP)] * batches)
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()
    return figures


def searches(base_url: str, ca_file: Path, rounds: int, label: str) -> dict:
    """Device searches alone, one keep-alive client: p50/p99 of each query's page of 100, in ms."""
    figures = {}
    with httpx.Client(base_url=base_url, verify=str(ca_file), timeout=120,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        for name, params in SEARCHES:
            times, total = [], None
            for _ in range(rounds):
                started = time.perf_counter()
                answer = client.get("/v1/devices", params={**params, "limit": "100"})
                times.append(time.perf_counter() - started)
                assert answer.status_code == 200, answer.text
                total = answer.json()["total"]
            q = statistics.quantiles(times, n=100)
            figures[name] = {"p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1), "matching": total}
            print(f"[search {label}] {name}: {figures[name]}", flush=True)
    figures["load"] = round(os.getloadavg()[0], 2)
    return figures


def count_seconds(db_path: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one count of every table, as the retention worker does it for /metrics."""
    from appliance.store.db import connect_readonly
    from appliance.store.retention import database_stats

    wall, cpu = time.perf_counter(), time.process_time()
    conn = connect_readonly(db_path)
    try:
        database_stats(conn, db_path)
    finally:
        conn.close()
    return round(time.perf_counter() - wall, 3), round(time.process_time() - cpu, 3)


def db_stats(config_path: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "appliance", "db", "stats", "--json", "--config", str(config_path)],
                          capture_output=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(done.stdout)


def metric(base_url: str, ca_file: Path, name: str) -> float:
    text = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"},
                     verify=str(ca_file), timeout=60).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


async def listings(base_url: str, ca_file: Path, stop: trio.Event, latencies: list[float]) -> None:
    """An operator's device listings, in turn: active devices (first page of 100, then the next page by its
    cursor) and a lookup by serial number."""
    async with httpx.AsyncClient(base_url=base_url, verify=str(ca_file), timeout=60,
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        n = 0
        while not stop.is_set():
            cursor = None
            for params in ({"active": "true", "limit": "100"}, {"active": "true", "limit": "100", "cursor": ""},
                           {"serial": f"SER{n * 37 % 5000:06d}"}):
                if "cursor" in params:
                    params["cursor"] = cursor
                started = time.perf_counter()
                answer = await client.get("/v1/devices", params=params)
                latencies.append(time.perf_counter() - started)
                assert answer.status_code == 200, answer.text
                cursor = answer.json().get("next_cursor")
            n += 1
            await trio.sleep(0.05)


def _quantiles(values: list[float]) -> str:
    if len(values) < 20:
        return f"n={len(values)} (too few)"
    q = statistics.quantiles(values, n=100)
    return f"n={len(values)} p50={q[49] * 1000:.1f} ms p99={q[98] * 1000:.1f} ms max={max(values) * 1000:.1f} ms"


async def measure(server: ServerProcess, devices: list[DeviceSim], ca_file: Path, seconds: float, label: str,
                  until=None) -> dict:
    """Round trips and listings for `seconds` (or until `until()` is true, checked each second)."""
    tally, stop, listed = Tally(), trio.Event(), []
    async with trio.open_nursery() as nursery:
        for device in devices:
            nursery.start_soon(device_loop, device, tally, stop)
        nursery.start_soon(listings, server.base_url, ca_file, stop, listed)
        await trio.sleep(2)  # warm-up
        load0, cpu0, own0 = os.getloadavg()[0], process_cpu_seconds(server.process.pid), own_cpu_seconds()
        wall0 = time.perf_counter()
        tally.measuring = True
        while time.perf_counter() - wall0 < seconds:
            await trio.sleep(1)
            if until is not None and await trio.to_thread.run_sync(until):
                break
        tally.measuring = False
        wall = time.perf_counter() - wall0
        figures = {"label": label, "seconds": round(wall, 1), "round_trips": len(tally.latencies),
                   "errors": tally.errors, "server_cpu": round(process_cpu_seconds(server.process.pid) - cpu0, 1),
                   "bench_cpu": round(own_cpu_seconds() - own0, 1), "load": (round(load0, 2), round(os.getloadavg()[0], 2))}
        stop.set()
    print(f"[{label}] {figures}")
    print(f"[{label}] round trips {_quantiles(tally.latencies)} ({len(tally.latencies) / wall:.0f}/s)")
    print(f"[{label}] device listings {_quantiles(listed)}")
    figures["round_trip"] = tally.latencies
    figures["listings"] = listed
    return figures


def enqueue(db_path: Path, udids: list[str], count: int) -> None:
    """Commands for the simulated devices' sessions, one transaction (as bench_mdm.py does)."""
    conn = connect_sync(db_path)
    conn.execute("BEGIN IMMEDIATE")
    start = conn.execute("SELECT count(*) FROM commands WHERE uuid LIKE 'BENCH-%'").fetchone()[0]
    for udid in udids:
        for n in range(count):
            uuid = f"BENCH-{udid}-{start + n:06d}"
            queue.enqueue(conn, uuid, "DeviceInformation", command_body(uuid, Queries=["OSVersion"]), [udid])
    conn.execute("COMMIT")
    conn.close()


async def idle_pass(work: Path, db_path: Path, identity: dict) -> dict:
    """The same pass on a copy of the seeded database, with no device traffic: its own wall and CPU time."""
    folder = work / "idle"
    (folder / "state").mkdir(parents=True)
    copied = time.perf_counter()
    shutil.copyfile(db_path, folder / "state" / "appliance.db")
    print(f"idle pass: copied the database in {time.perf_counter() - copied:.1f} s", flush=True)
    port = free_port()
    config = make_config(folder, port=port, identity=identity, logging={"level": "info"})
    server = ServerProcess(config, port, folder / "server.log")
    started = time.perf_counter()
    await server.start(timeout=120)
    ca_file = folder / "state" / "ca.crt"
    try:
        while metric(server.base_url, ca_file, "mdm_retention_last_pass_timestamp_seconds") <= 0:
            await trio.sleep(1)
        figures = {"wall_from_start": round(time.perf_counter() - started, 1),
                   "pass_seconds": metric(server.base_url, ca_file, "mdm_retention_last_pass_seconds"),
                   "server_cpu": round(process_cpu_seconds(server.process.pid), 1),
                   "load": round(os.getloadavg()[0], 2)}
    finally:
        server.stop()
    after = db_stats(config)
    figures["after_bytes"] = after["file_bytes"] + after["wal_bytes"]
    shutil.rmtree(folder, ignore_errors=True)
    print(f"idle pass: {figures}", flush=True)
    return figures


async def run(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-retention-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        ca = TestCA(directory=work)
        port = free_port()
        identity = {"trusted_ca_files": [str(ca.pem_path)]}
        off = make_config(work, port=port, identity=identity, logging={"level": "info"}, retention=OFF)
        state = work / "state"
        state.mkdir(exist_ok=True)
        db_path = state / "appliance.db"
        now = datetime.now(UTC)
        print(f"seeding {args.devices} devices x {args.days} days into {db_path} ...", flush=True)
        seeded = seed_history(db_path, args.devices, args.days, now)
        print(f"seeded {seeded}")
        before = db_stats(off)
        print(f"before: file={before['file_bytes'] / 1e6:.0f} MB wal={before['wal_bytes'] / 1e6:.0f} MB "
              f"rows={ {k: v for k, v in before['rows'].items() if v} } counting every table (wall, cpu s): "
              f"{count_seconds(db_path)}", flush=True)

        batches = batch_seconds(db_path, now)
        print(f"write jobs of the pass, rolled back (ms): {batches}", flush=True)

        idle = await idle_pass(work, db_path, identity) if args.idle_pass else None

        # 1. Retention off: enroll the simulated devices, queue their commands, measure.
        server = ServerProcess(off, port, work / "server-off.log")
        await server.start(timeout=120)
        ca_file = state / "ca.crt"
        devices = []
        for n in range(args.sim_devices):
            udid = f"BENCH-{n:05d}"
            cert, key = ca.issue(udid)
            devices.append(DeviceSim(server.base_url, client_context(ca_file), cert, key, udid))
        try:
            search_before = await trio.to_thread.run_sync(searches, server.base_url, ca_file, args.rounds, "before")
            async with trio.open_nursery() as nursery:
                for device in devices:
                    nursery.start_soon(device.enroll)
            enqueue(db_path, [device.udid for device in devices], args.commands)
            baseline = await measure(server, devices, ca_file, args.seconds, "retention off")
        finally:
            for device in devices:
                await device.aclose()
            server.stop()

        # 2. Default ages: the first pass starts with the server; measure while it runs, then after.
        enqueue(db_path, [device.udid for device in devices], args.commands)
        on = make_config(work, port=port, identity=identity, logging={"level": "info"})
        server = ServerProcess(on, port, work / "server-on.log")
        started = time.perf_counter()
        await server.start(timeout=120)
        pid = server.process.pid
        cpu_at_start = process_cpu_seconds(pid)
        try:
            def finished() -> bool:
                return metric(server.base_url, ca_file, "mdm_retention_last_pass_timestamp_seconds") > 0

            during = await measure(server, devices, ca_file, args.seconds, "while pruning", until=finished)
            with trio.fail_after(args.pass_timeout):
                while not await trio.to_thread.run_sync(finished):
                    await trio.sleep(1)
            pass_wall = time.perf_counter() - started
            pass_cpu = process_cpu_seconds(pid) - cpu_at_start
            pass_seconds = metric(server.base_url, ca_file, "mdm_retention_last_pass_seconds")
            pruned = {kind: metric(server.base_url, ca_file, f'mdm_retention_pruned_rows_total{{kind="{kind}"}}')
                      for kind in ("results", "command_bodies", "stray_reports", "ddm_status_history")}
            released = metric(server.base_url, ca_file, "mdm_database_released_bytes_total")
            print(f"pass: {pass_seconds:.1f} s by the server's clock; from start to its end {pass_wall:.1f} s wall, "
                  f"server CPU {pass_cpu:.1f} s (device traffic of the measurement included); pruned {pruned}; "
                  f"released {released / 1e6:.0f} MB", flush=True)
            search_after = await trio.to_thread.run_sync(searches, server.base_url, ca_file, args.rounds, "after")
            after = await measure(server, devices, ca_file, args.seconds, "after pruning")
        finally:
            for device in devices:
                await device.aclose()
            server.stop()
        final = db_stats(off)
        print(f"after: file={final['file_bytes'] / 1e6:.0f} MB wal={final['wal_bytes'] / 1e6:.0f} MB "
              f"free={final['free_bytes'] / 1e6:.1f} MB rows={ {k: v for k, v in final['rows'].items() if v} } "
              f"counting every table (wall, cpu s): {count_seconds(db_path)}")
        summary = {"seeded": seeded, "before_bytes": before["file_bytes"] + before["wal_bytes"],
                   "after_bytes": final["file_bytes"] + final["wal_bytes"], "pass_seconds": pass_seconds,
                   "pass_wall_from_start": round(pass_wall, 1), "pass_server_cpu": round(pass_cpu, 1),
                   "pruned": pruned, "cores": os.cpu_count(), "idle_pass": idle, "write_jobs_ms": batches,
                   "search_before": search_before, "search_after": search_after}
        for phase in (baseline, during, after):
            summary[phase["label"]] = {key: value for key, value in phase.items()
                                       if key not in ("round_trip", "listings")}
        print(json.dumps(summary))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--sim-devices", type=int, default=50)
    parser.add_argument("--commands", type=int, default=400,
                        help="commands queued to every simulated device before each server run")
    parser.add_argument("--seconds", type=float, default=30, help="each measurement's length")
    parser.add_argument("--rounds", type=int, default=50, help="requests per search query, before and after")
    parser.add_argument("--pass-timeout", type=float, default=3600)
    parser.add_argument("--no-idle-pass", dest="idle_pass", action="store_false",
                        help="skip the pass on a copy of the database without device traffic")
    parser.add_argument("--work", help="folder for the data (default: a temporary one, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the folder")
    args = parser.parse_args()
    trio.run(run, args)


if __name__ == "__main__":
    main()
