"""The console's devices page over 10,000 devices on the real server (in-process, loopback TLS, real SQLite
file): server time (the Server-Timing header every console page carries: the handler, its queries and the
template) and the client's round trip, p50 and p99, per kind of page.

    PYTHONPATH=. .venv/bin/python tests/perf/bench_console.py [--devices 10000] [--rounds 200]

Kinds: the first page sorted by name; a text search; sorted by OS version descending; the 20th page by
keyset (the `after` of page 19); inactive devices sorted by last seen. One signed-in keep-alive client.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.logs import setup_logging  # noqa: E402
from tests.support.console_users import PASSWORDS, Console, add_users  # noqa: E402
from tests.support.fleet_seed import command_plist, seed_devices  # noqa: E402
from tests.support.harness import make_config, start_server  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


async def deep_page(console: Console, pages: int) -> str:
    path = "/console/devices?sort=name"
    for _ in range(pages - 1):
        html = (await console.get(path)).text
        found = re.search(r'rel="next" href="\?([^"]+)"', html)
        path = "/console/devices?" + found.group(1).replace("&amp;", "&")
    return path


async def main(devices: int, rounds: int) -> None:
    setup_logging("warning")
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, make_config(Path(tmp), logging={"level": "warning"}))

            def seed(conn):
                ids = seed_devices(conn, devices)
                conn.executemany("UPDATE enrollments SET last_seen_at = ?, active = ? WHERE id = ?",
                                 [(f"2026-02-{i % 28 + 1:02d}T00:00:00.000000Z", int(i % 10 != 0), d)
                                  for i, d in enumerate(ids)])
                conn.executemany("UPDATE devices SET os_version = ? WHERE id = ?",
                                 [(f"{13 + i % 3}.{i % 7}", d) for i, d in enumerate(ids)])
                # 10 pending commands on every 10th device, behind the pending counts.
                for n in range(10):
                    uuid_, body = command_plist("ProfileList")
                    conn.execute("INSERT INTO commands VALUES (?, 'ProfileList', ?, '2026-01-01T00:00:00.000000Z')",
                                 (uuid_, body))
                    conn.executemany("INSERT INTO queue (enrollment_id, command_uuid, created_at) VALUES (?, ?, "
                                     "'2026-01-01T00:00:00.000000Z')", [(d, uuid_) for d in ids[::10]])

            await server.runtime.store.write(seed)
            await add_users(server, viewer="bench")
            async with Console(server) as console:
                await console.login("bench", PASSWORDS["viewer"])
                kinds = {
                    "first page, by name": "/console/devices",
                    "search \"SER0012\"": "/console/devices?q=SER0012",
                    "by OS version, descending": "/console/devices?sort=os&dir=desc",
                    "20th page (keyset)": await deep_page(console, 20),
                    "inactive, by last seen": "/console/devices?state=inactive&sort=last_seen",
                }
                print(f"{devices} devices, {rounds} requests per kind; server time = Server-Timing app;dur")
                print(f"{'page':32} {'server p50':>11} {'server p99':>11} {'round trip p50':>15} {'p99':>7}")
                for label, path in kinds.items():
                    server_ms, client_ms = [], []
                    for _ in range(rounds):
                        started = time.perf_counter()
                        answer = await console.get(path)
                        client_ms.append((time.perf_counter() - started) * 1000)
                        assert answer.status_code == 200, answer.status_code
                        server_ms.append(float(answer.headers["server-timing"].split("dur=")[1]))
                    print(f"{label:32} {percentile(server_ms, .5):9.1f}ms {percentile(server_ms, .99):9.1f}ms "
                          f"{percentile(client_ms, .5):13.1f}ms {percentile(client_ms, .99):5.1f}ms")
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=200)
    options = parser.parse_args()
    trio.run(main, options.devices, options.rounds)
