"""MDM command round trips: N simulated devices doing Idle -> command -> Acknowledged sessions over real TLS
against `python -m appliance serve` in a child process, for a fixed time.

    PYTHONPATH=. /work/venv/bin/python tests/perf/bench_mdm.py --devices 50 --seconds 20
    PYTHONPATH=. /work/venv/bin/python tests/perf/bench_mdm.py --identity tls      # TLS client certificates

Each session: Idle (answered with a command), Acknowledged (stores the result, answered with the next
command, which this device leaves for its next session, as a device would whose session ended). A round
trip is one request answered 200. Prints round trips/s, sessions/s, p50/p99/max latency, the server's CPU
per round trip (from /proc/<pid>/stat) and the client's own CPU (client and server share the cores).
Identity: "signature" signs every request with Mdm-Signature (RSA-2048, like a SCEP identity) as devices do
with SignMessage; "tls" presents the identity as TLS client certificate (no per-request signing).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.config import load_config  # noqa: E402
from appliance.store import queue  # noqa: E402
from appliance.store.db import connect_sync  # noqa: E402
from tests.support.device_sim import DeviceSim, TestCA, client_context  # noqa: E402
from tests.support.harness import API_KEY, free_port, make_config  # noqa: E402
from tests.support.mdm_support import ServerProcess, command_body  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    return _cpu_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """(event loop thread, all other threads: the store thread, trio's worker threads) of the server."""
    loop = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds = _cpu_seconds(task / "stat")
        except OSError:  # the thread ended meanwhile
            continue
        if task.name == str(pid):
            loop += seconds
        else:
            others += seconds
    return loop, others


def _cpu_seconds(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def store_counts(base_url: str, ca_file: Path) -> tuple[int, int]:
    """(write jobs, commits) from the server's /metrics: how well group commit batches the writes
    ((0, 0) from a server too old to have these metrics)."""
    text = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"},
                     verify=str(ca_file), timeout=30).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("mdm_store_write_jobs_total", "mdm_store_commits_total"):
            values[name] = int(float(value))
    return values.get("mdm_store_write_jobs_total", 0), values.get("mdm_store_commits_total", 0)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Tally:
    def __init__(self) -> None:
        self.measuring = False
        self.latencies: list[float] = []
        self.sessions = 0
        self.errors = 0
        self.total = 0


async def device_loop(device: DeviceSim, tally: Tally, stop: trio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        reply = await device.idle()
        idle_done = time.perf_counter()
        uuid = reply.command_uuid
        if reply.status != 200 or uuid is None:
            tally.errors += 1
            await trio.sleep(0.01)
            continue
        reply = await device.acknowledge(uuid, QueryResponses={"OSVersion": "14.4", "BuildVersion": "23E214"})
        done = time.perf_counter()
        if reply.status != 200:
            tally.errors += 1
        tally.total += 2
        if tally.measuring:
            tally.latencies += [idle_done - started, done - idle_done]
            tally.sessions += 1


async def run(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-mdm-"))
    try:
        ca = TestCA(directory=work)
        port = free_port()
        config_path = make_config(work, port=port, identity={"trusted_ca_files": [str(ca.pem_path)]},
                                  logging={"level": "warning"}, storage={"synchronous": args.synchronous})
        config = load_config(config_path)
        profile = ("-m", "cProfile", "-o", args.profile) if args.profile else ()
        if os.environ.get("BENCH_SERVER_PYTHON_ARGS"):  # e.g. an instrumenting wrapper script
            profile = tuple(os.environ["BENCH_SERVER_PYTHON_ARGS"].split())
        server = ServerProcess(config_path, port, work / "server.log", profile)
        await server.start()
        try:
            devices = []
            for n in range(args.devices):
                udid = f"BENCH-{n:05d}"
                cert, key = ca.issue(udid)
                if args.identity == "tls":
                    context = client_context(config.data_dir / "ca.crt", cert, key)
                else:
                    context = client_context(config.data_dir / "ca.crt")
                devices.append(DeviceSim(server.base_url, context, cert, key, udid, sign=args.identity == "signature"))
            async with trio.open_nursery() as nursery:
                for device in devices:
                    nursery.start_soon(device.enroll)
            per_device = args.commands_per_device
            conn = connect_sync(config.data_dir / "appliance.db")
            conn.execute("BEGIN IMMEDIATE")
            for device in devices:
                for i in range(per_device):
                    uuid = f"{device.udid}-{i:06d}"
                    queue.enqueue(conn, uuid, "DeviceInformation", command_body(uuid, Queries=["OSVersion"]),
                                  [device.udid])
            conn.execute("COMMIT")
            conn.close()

            tally, stop = Tally(), trio.Event()
            async with trio.open_nursery() as nursery:
                for device in devices:
                    nursery.start_soon(device_loop, device, tally, stop)
                await trio.sleep(args.warmup)
                ca_file = config.data_dir / "ca.crt"
                writes0, commits0 = await trio.to_thread.run_sync(store_counts, server.base_url, ca_file)
                load0 = os.getloadavg()[0]
                server_cpu0, client_cpu0 = process_cpu_seconds(server.process.pid), own_cpu_seconds()
                threads0 = thread_cpu_seconds(server.process.pid)
                wall0 = time.perf_counter()
                tally.measuring = True
                await trio.sleep(args.seconds)
                tally.measuring = False
                wall = time.perf_counter() - wall0
                server_cpu = process_cpu_seconds(server.process.pid) - server_cpu0
                threads = [b - a for a, b in zip(threads0, thread_cpu_seconds(server.process.pid))]
                client_cpu = own_cpu_seconds() - client_cpu0
                load1 = os.getloadavg()[0]
                writes1, commits1 = await trio.to_thread.run_sync(store_counts, server.base_url, ca_file)
                stop.set()
            for device in devices:
                await device.aclose()
        finally:
            server.stop()
        lat = sorted(tally.latencies)
        trips = len(lat)
        quantiles = statistics.quantiles(lat, n=100) if trips >= 100 else [float("nan")] * 99
        print(f"devices={args.devices} identity={args.identity} synchronous={args.synchronous} "
              f"seconds={wall:.1f} cores={os.cpu_count()}")
        print(f"measured_round_trips={trips} total_requests_seen={tally.total}")
        print(f"round_trips={trips} round_trips_per_s={trips / wall:.0f} sessions_per_s={tally.sessions / wall:.0f} "
              f"errors={tally.errors}")
        print(f"latency_ms p50={quantiles[49] * 1000:.1f} p99={quantiles[98] * 1000:.1f} max={lat[-1] * 1000:.1f}")
        print(f"server_cpu_per_round_trip_us={server_cpu / max(trips, 1) * 1e6:.0f} "
              f"(event_loop={threads[0] / max(trips, 1) * 1e6:.0f} other_threads={threads[1] / max(trips, 1) * 1e6:.0f}) "
              f"server_cpu_util={server_cpu / wall:.2f} client_cpu_util={client_cpu / wall:.2f}")
        writes, commits = writes1 - writes0, commits1 - commits0
        print(f"store write_jobs={writes} commits={commits} jobs_per_commit={writes / max(commits, 1):.2f} "
              f"(the metrics scrapes add 2 reads, no writes)")
        print(f"load_average_1min start={load0:.2f} end={load1:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--identity", choices=["signature", "tls"], default="signature")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--commands-per-device", type=int, default=600)
    parser.add_argument("--profile", metavar="FILE", help="run the server under cProfile, stats to FILE")
    args = parser.parse_args()
    trio.run(run, args)


if __name__ == "__main__":
    main()
