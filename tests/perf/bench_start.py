"""Start time to READY=1 (sd_notify) and CLI start time of one or more builds of the appliance.

    PYTHONPATH=. .venv/bin/python tests/perf/bench_start.py --runs 7 \\
        venv=/tmp/rtvenv/bin/mdm-appliance onedir=build/pyinstaller/dist/onedir/mdm-appliance \\
        onefile=dist/mdm-appliance

Each build runs in an empty environment (env -i) on config/local.toml (own port, own data_dir).
"first start" creates the CA, TLS key and database; "restart" starts again on that data_dir.
Runs of the builds are interleaved so that load from other work hits them alike. Prints medians.
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def time_to_ready(command: str, folder: Path) -> float:
    """Seconds from spawning `command serve` until it sends READY=1; then stops it with SIGTERM."""
    notify_path = folder / "notify.sock"
    notify_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(120)
        started = time.perf_counter()
        process = subprocess.Popen(["env", "-i", f"NOTIFY_SOCKET={notify_path}", command, "serve", "--config",
                                    str(folder / "local.toml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while b"READY=1" not in notify.recv(4096).split(b"\n"):
                pass
            elapsed = time.perf_counter() - started
            process.send_signal(signal.SIGTERM)
            if process.wait(timeout=60) != 0:
                raise SystemExit(f"{command} exited {process.returncode} on SIGTERM")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return elapsed


def time_version(command: str) -> float:
    started = time.perf_counter()
    subprocess.run(["env", "-i", command, "--version"], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("builds", nargs="+", metavar="NAME=EXECUTABLE")
    options = parser.parse_args()
    builds = dict(item.split("=", 1) for item in options.builds)
    results: dict[str, dict[str, list[float]]] = {name: {"first": [], "restart": [], "version": []} for name in builds}
    config = (ROOT / "config" / "local.toml").read_text()
    for _ in range(options.runs):
        for name, command in builds.items():
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                (folder / "local.toml").write_text(config.replace(":8443", f":{free_port()}"))
                results[name]["first"].append(time_to_ready(command, folder))
                results[name]["restart"].append(time_to_ready(command, folder))
            results[name]["version"].append(time_version(command))
    print(f"{'build':<10} {'first start to READY':>22} {'restart to READY':>18} {'--version':>11}   ({options.runs} runs, median)")
    for name, figures in results.items():
        first, restart, version = (statistics.median(figures[k]) for k in ("first", "restart", "version"))
        print(f"{name:<10} {first:>20.2f} s {restart:>16.2f} s {version:>9.2f} s")


if __name__ == "__main__":
    main()
