"""Benchmark: 10,000 pushes through one HTTP/2 connection to a local server that requires a client cert.

Prints pushes per second and the client's CPU per push (time.process_time of this process; the
server runs in its own process). Servers: nginx (http2, ssl_verify_client on, `return 200`) or the
h2 stand-in from tests/. Optionally runs aioapns against the same server from a separate venv
(benchmark dependencies never become project dependencies).

    PYTHONPATH=. /work/venv/bin/python tests/perf/bench_apns.py --server nginx --rounds 5
    PYTHONPATH=. /work/venv/bin/python tests/perf/bench_apns.py --server nginx --aioapns-python /tmp/aioapns-venv/bin/python
    PYTHONPATH=. /work/venv/bin/python tests/perf/bench_apns.py --server standin
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from appliance.push.apns import APNsClient
from appliance.push.pushcert import load_pem
from tests.support.apns_certs import make_ca, make_push_cert, make_server

HERE = Path(__file__).resolve().parent

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    # APNs echoes the client's apns-id (aioapns matches answers by it), else makes one up
    map $http_apns_id $apns_id {{ "" $request_id; default $http_apns_id; }}
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {d}/server.pem;
        ssl_certificate_key {d}/server.key;
        ssl_client_certificate {d}/push-ca.pem;
        ssl_verify_client on;
        http2_max_concurrent_streams 1000;
        location / {{
            add_header apns-id $apns_id always;
            return 200;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}")


def start_server(kind: str, d: Path) -> tuple[subprocess.Popen, int]:
    if kind == "nginx":
        port = free_port()
        (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, port=port))
        proc = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(d / "nginx.conf"),
                                 "-p", str(d)], stderr=subprocess.DEVNULL)
        wait_port(port)
        return proc, port
    port_file = d / "port"
    proc = subprocess.Popen(
        [sys.executable, str(HERE.parent / "support" / "apns_standin.py"), "--cert", str(d / "server.pem"),
         "--key", str(d / "server.key"), "--client-ca", str(d / "push-ca.pem"),
         "--port-file", str(port_file)],
        env={**os.environ, "PYTHONPATH": str(HERE.parents[1])})
    deadline = time.monotonic() + 10
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError("stand-in did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


async def bench_ours(url: str, d: Path, n: int, rounds: int, streams: int) -> list[tuple[float, float]]:
    cert = load_pem((d / "push.pem").read_bytes(), (d / "push.key").read_bytes())
    client = APNsClient(url, certificate=cert, ca_file=d / "server-ca.pem", max_streams=streams)
    figures = []
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.push_many([(f"{i:064x}", "warm") for i in range(500)])  # connect + warm up
        for r in range(rounds):
            items = [(f"{r:08x}{i:056x}", "B1A7D2C4-5E6F-4A8B-9C0D-1E2F3A4B5C6D") for i in range(n)]
            wall, cpu = time.perf_counter(), time.process_time()
            results = await client.push_many(items)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            ok = sum(1 for x in results if x.ok)
            if ok != n:
                print(f"  round {r}: only {ok}/{n} ok: {next(x for x in results if not x.ok)}")
            figures.append((n / wall, cpu / n * 1e6))
            print(f"  ours     round {r}: {n / wall:8.0f} pushes/s   {cpu / n * 1e6:6.1f} µs CPU/push"
                  f"   ({wall:.2f} s, {client.stats['connects']} connection)")
        nursery.cancel_scope.cancel()
    return figures


def use_library_hpack() -> None:
    """Swap h2wire's request encoder for hpack's own (h2's default), all else unchanged."""
    import hpack
    from appliance.push import h2wire

    plain_init = h2wire.APNsH2Connection.__init__

    def init(self, streams, **kwargs):
        plain_init(self, streams, **kwargs)
        self.encoder = hpack.Encoder()

    h2wire.APNsH2Connection.__init__ = init


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--server", choices=["nginx", "standin"], default="nginx")
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=100, help="our own in-flight stream cap")
    parser.add_argument("--hpack", choices=["ours", "library"], default="ours",
                        help="library: hpack's own Encoder in place of h2wire's RequestEncoder (comparison)")
    parser.add_argument("--aioapns-python", help="python of a throwaway venv with aioapns installed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-apns-") as tmp:
        d = Path(tmp)
        server_ca, push_ca = make_ca("bench server CA"), make_ca("bench push CA")
        server, push = make_server(server_ca), make_push_cert(push_ca, rsa_key=True)
        for name, data in {"server-ca.pem": server_ca.cert_pem, "server.pem": server.cert_pem,
                           "server.key": server.key_pem, "push-ca.pem": push_ca.cert_pem,
                           "push.pem": push.cert_pem, "push.key": push.key_pem,
                           "push-combined.pem": push.cert_pem + push.key_pem}.items():
            (d / name).write_bytes(data)
        if args.hpack == "library":
            use_library_hpack()
        proc, port = start_server(args.server, d)
        try:
            url = f"https://localhost:{port}"
            print(f"server: {args.server} on {url}, {args.n} pushes per round, one connection,"
                  f" HPACK: {args.hpack}")
            ours = trio.run(bench_ours, url, d, args.n, args.rounds, args.streams)
            rates = sorted(f[0] for f in ours)
            cpus = sorted(f[1] for f in ours)
            print(f"ours:    median {rates[len(rates) // 2]:.0f} pushes/s (range {rates[0]:.0f}-{rates[-1]:.0f}),"
                  f" median {cpus[len(cpus) // 2]:.1f} µs CPU/push")
            if args.aioapns_python:
                subprocess.run([args.aioapns_python, str(HERE / "bench_apns_aioapns.py"), "--port", str(port),
                                "--dir", str(d), "-n", str(args.n), "--rounds", str(args.rounds)], check=True)
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
