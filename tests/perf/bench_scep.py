"""Benchmark: SCEP enrollments (PKCSReq -> issued certificate) per second, and their latency.

The appliance runs in its own process (`mdm-appliance serve`, TLS, a real SQLite file); the requests
are built beforehand by the independent test client (tests/support/scep_client.py, openssl envelopes) so
only the server's work is timed: parse + verify, decrypt, challenge check, issue, record (group-
committed), CertRep sign + encrypt. With --peer, the same requests also go to micromdm's
`scepserver` (Debian package `scep`; plain HTTP, a 2048-bit CA like ours) for comparison.

    PYTHONPATH=. /work/venv/bin/python tests/perf/bench_scep.py --requests 300 --concurrency 8
    PYTHONPATH=. /work/venv/bin/python tests/perf/bench_scep.py --requests 300 --concurrency 8 --peer
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio
from cryptography import x509

from tests.support import scep_client as client
from tests.support.harness import free_port, make_config


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def _requests(ca: x509.Certificate, count: int, challenge: str, cipher: str) -> list[client.Request]:
    return [client.pkcs_req(client.Requester(common_name=f"bench-{i}", challenge=challenge), ca,
                            cipher=cipher, digest="sha256") for i in range(count)]


async def _drive(base: str, verify, requests: list[client.Request], concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    pending = list(requests)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(verify=verify, timeout=60, limits=limits) as http:
        async def worker() -> None:
            while pending:
                request = pending.pop()
                started = time.perf_counter()
                response = await http.post(base + "/scep?operation=PKIOperation", content=request.der)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise SystemExit(f"answer {response.status_code}: {response.text[:200]}")

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        return time.perf_counter() - started, latencies


def _report(name: str, elapsed: float, latencies: list[float]) -> None:
    latencies.sort()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    print(f"{name}: {len(latencies)} enrollments in {elapsed:.2f} s = {len(latencies) / elapsed:.0f}/s; "
          f"latency p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")


def _fetch_ca(base: str, verify) -> x509.Certificate:
    der = httpx.get(base + "/scep", params={"operation": "GetCACert"}, verify=verify).content
    return x509.load_der_x509_certificate(der)


def bench_appliance(args, tmp: Path) -> None:
    port = free_port()
    config = make_config(tmp, port=port, server={"public_url": f"https://127.0.0.1:{port}"},
                         apns={"url": "https://127.0.0.1:9"}, logging={"level": "warning"})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    server = subprocess.Popen([sys.executable, "-c", "from appliance.cli import main; main()", "serve",
                               "--config", str(config)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        base = f"https://127.0.0.1:{port}"
        verify = ssl.create_default_context(cafile=str(tmp / "state" / "ca.crt"))
        ca = _fetch_ca(base, verify)
        requests = _requests(ca, args.requests, "test-challenge", args.cipher)
        cpu_before = _cpu(server.pid)
        elapsed, latencies = trio.run(_drive, base, verify, requests, args.concurrency)
        cpu = _cpu(server.pid) - cpu_before
        _report("appliance (TLS)", elapsed, latencies)
        print(f"  server CPU {cpu / len(latencies) * 1000:.1f} ms per enrollment")
    finally:
        server.terminate()
        server.wait()


def bench_peer(args, tmp: Path) -> None:
    if shutil.which("scepserver") is None:
        print("scepserver not installed (apt-get install scep): peer skipped")
        return
    subprocess.run(["scepserver", "ca", "-init", "-keySize", "2048"], cwd=tmp, check=True,
                   capture_output=True)
    port = free_port()
    server = subprocess.Popen(["scepserver", "-depot", "depot", "-port", str(port), "-challenge", "pw"],
                              cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        base = f"http://127.0.0.1:{port}"
        ca = _fetch_ca(base, True)
        requests = _requests(ca, args.requests, "pw", args.cipher)
        cpu_before = _cpu(server.pid)
        elapsed, latencies = trio.run(_drive, base, True, requests, args.concurrency)
        cpu = _cpu(server.pid) - cpu_before
        _report("micromdm scepserver 2.1 (plain HTTP)", elapsed, latencies)
        print(f"  server CPU {cpu / len(latencies) * 1000:.1f} ms per enrollment")
    finally:
        server.terminate()
        server.wait()


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cipher", default="aes128", choices=sorted(client.CIPHERS))
    parser.add_argument("--peer", action="store_true", help="also run micromdm's scepserver")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "appliance").mkdir()
        bench_appliance(args, Path(tmp) / "appliance")
        if args.peer:
            (Path(tmp) / "peer").mkdir()
            bench_peer(args, Path(tmp) / "peer")


if __name__ == "__main__":
    main()
