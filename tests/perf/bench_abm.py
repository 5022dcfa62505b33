"""Benchmark: a full fetch plus profile assignment of N devices from Apple Business Manager.

The DEP simulator (tests/support/dep_sim.py) runs in its own process with N devices; the real appliance
(in-process, real SQLite file, loopback TLS for its API) gets a key pair and the simulator's token through
its admin API, then fetches every device in pages and assigns the profile to each. Measured: from the
token import until every device is assigned; then the next sync, which reads back the N "modified" records
the assignments caused. Requests are the appliance's own count (mdm_abm_requests_total); CPU is this
process's (the appliance and the benchmark's polling of its state), the simulator's is not in it.

    PYTHONPATH=. .venv/bin/python tests/perf/bench_abm.py --devices 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.logs import setup_logging  # noqa: E402
from tests.support.abm_support import server_state  # noqa: E402
from tests.support.dep_sim import DepSim  # noqa: E402
from tests.support.harness import make_config, start_server  # noqa: E402
from tests.support.push_support import metric_lines  # noqa: E402

SIM = Path(__file__).resolve().parents[1] / "support" / "dep_sim.py"


async def wait(server, predicate, timeout: float = 600) -> dict:
    with trio.fail_after(timeout):
        while True:
            state = await server_state(server, "main")
            if predicate(state):
                return state
            await trio.sleep(0.05)


async def one_round(devices: int, page_size: int, tmp: Path) -> dict:
    port_file, token_file = tmp / "port", tmp / "token.json"
    sim_process = subprocess.Popen([sys.executable, str(SIM), "--devices", str(devices), "--port-file",
                                    str(port_file), "--token-file", str(token_file)])
    try:
        with trio.fail_after(60):
            while not port_file.exists() or not port_file.read_text():
                await trio.sleep(0.05)
        sim_url = port_file.read_text()
        config = make_config(tmp, abm={"api_url": sim_url, "sync_interval": "1h", "page_size": page_size},
                             logging={"level": "warning"})
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, config)
            async with server.api_client() as api:
                certificate = (await api.post("/v1/abm/servers/main")).json()["certificate"].encode()
                token = DepSim().token_file("main", certificate, token=json.loads(token_file.read_text()))
                started, cpu_started = time.perf_counter(), time.process_time()
                assert (await api.put("/v1/abm/servers/main/token", content=token)).status_code == 200
                fetched = await wait(server, lambda s: s["phase"] == "sync")
                fetch_done = time.perf_counter()
                await wait(server, lambda s: s["devices"].get("assigned") == devices)
                assigned, cpu_assigned = time.perf_counter(), time.process_time()
                metrics = (await api.get("/metrics")).text
                before = sum(metric_lines(metrics, "mdm_abm_requests_total").values())
                sync_started = time.perf_counter()
                await api.post("/v1/abm/servers/main/sync")
                await wait(server, lambda s: s["last_sync_at"] != fetched["last_sync_at"]
                           and s["devices"].get("assigned") == devices)
                synced = time.perf_counter()
                metrics = (await api.get("/metrics")).text
            requests = metric_lines(metrics, "mdm_abm_requests_total")
            records = metric_lines(metrics, "mdm_abm_device_records_total")
            server.stop()
        return {
            "fetch_seconds": fetch_done - started,
            "fetch_and_assign_seconds": assigned - started,
            "requests_fetch_and_assign": int(before),
            "cpu_seconds": cpu_assigned - cpu_started,
            "by_endpoint": {labels: int(count) for labels, count in requests.items()},
            "sync_seconds": synced - sync_started,
            "sync_requests": int(sum(requests.values()) - before),
            "sync_records": int(sum(v for k, v in records.items() if 'phase="sync"' in k)),
        }
    finally:
        sim_process.terminate()
        sim_process.wait(timeout=10)


async def main(devices: int, rounds: int, page_size: int) -> None:
    setup_logging("warning")
    for round_number in range(1, rounds + 1):
        with tempfile.TemporaryDirectory() as tmp:
            result = await one_round(devices, page_size, Path(tmp))
        print(f"round {round_number}: {devices} devices, page size {page_size}: full fetch "
              f"{result['fetch_seconds']:.2f} s, fetch + assignment {result['fetch_and_assign_seconds']:.2f} s "
              f"in {result['requests_fetch_and_assign']} requests, appliance CPU {result['cpu_seconds']:.2f} s; next sync {result['sync_seconds']:.2f} s, "
              f"{result['sync_requests']} requests, {result['sync_records']} records")
        if round_number == 1:
            for labels, count in sorted(result["by_endpoint"].items()):
                print(f"    {labels} {count}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--page-size", type=int, default=1000)
    args = parser.parse_args()
    trio.run(main, args.devices, args.rounds, args.page_size)
