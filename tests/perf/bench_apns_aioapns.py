"""The comparison run for bench_apns.py: aioapns (asyncio) against the same local server, one connection.

Runs in a throwaway venv with aioapns installed (never the project's venv); bench_apns.py starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import time
from pathlib import Path

from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsProductionClientProtocol


async def run(port: int, d: Path, n: int, rounds: int) -> None:
    APNsProductionClientProtocol.APNS_SERVER = "localhost"
    APNsProductionClientProtocol.APNS_PORT = port
    context = ssl.create_default_context(cafile=str(d / "server-ca.pem"))
    context.set_alpn_protocols(["h2"])  # nginx picks HTTP/1.1 without it
    client = APNs(client_cert=str(d / "push-combined.pem"), topic="com.apple.mgmt.bench",
                  max_connections=1, ssl_context=context)

    logging.getLogger("aioapns").setLevel(logging.CRITICAL)
    # one connection: keep within nginx's 1000 streams, or aioapns sleeps in its "pool busy" retry loop
    limit = asyncio.Semaphore(900)

    async def send(token: str):
        async with limit:
            return await client.send_notification(request(token))

    def request(token: str) -> NotificationRequest:
        return NotificationRequest(device_token=token, message={"mdm": "B1A7D2C4-5E6F-4A8B-9C0D-1E2F3A4B5C6D"},
                                   push_type=PushType.MDM, priority=10, time_to_live=3 * 86400)

    await asyncio.gather(*(send(f"{i:064x}") for i in range(500)))
    rates = []
    for r in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        results = await asyncio.gather(*(send(f"{r:08x}{i:056x}") for i in range(n)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        ok = sum(1 for x in results if x.is_successful)
        rates.append(n / wall)
        print(f"  aioapns  round {r}: {n / wall:8.0f} pushes/s   {cpu / n * 1e6:6.1f} µs CPU/push"
              f"   ({wall:.2f} s, {ok}/{n} ok)")
    rates.sort()
    print(f"aioapns: median {rates[len(rates) // 2]:.0f} pushes/s (range {rates[0]:.0f}-{rates[-1]:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.port, args.dir, args.n, args.rounds))


if __name__ == "__main__":
    main()
