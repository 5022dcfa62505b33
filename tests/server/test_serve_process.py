"""`mdm-appliance serve` as systemd runs it: a subprocess that speaks sd_notify to a socket we own."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from appliance.systemd import Notifier
from tests.support.harness import free_port, make_config
from tests.support.notify import NotifySocket

ROOT = Path(__file__).resolve().parents[2]


def start(tmp_path: Path, port: int, notify: Path, **env) -> subprocess.Popen:
    config = make_config(tmp_path, port=port)
    environment = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "WATCHDOG_USEC")}
    environment.update(NOTIFY_SOCKET=str(notify), PYTHONPATH=str(ROOT), **env)
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--config", str(config)],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.fixture
def notify(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_ready_healthz_watchdog_and_graceful_sigterm(tmp_path, notify):
    port = free_port()
    process = start(tmp_path, port, tmp_path / "notify.sock", WATCHDOG_USEC="400000")
    try:
        notify.wait_for("READY=1", timeout=30)
        context = ssl.create_default_context(cafile=str(tmp_path / "state" / "ca.crt"))
        response = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=context, timeout=10)
        assert response.status_code == 200 and response.json()["checks"]["devices"]["status"] == "ok"
        # WATCHDOG_USEC=0.4 s: pings every 0.2 s from the event loop.
        before = sum(m == "WATCHDOG=1" for m in notify.messages)
        time.sleep(1.0)
        try:
            while True:
                notify.messages.append(notify.sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert sum(m == "WATCHDOG=1" for m in notify.messages) - before >= 3
        status = [m for m in notify.messages if m.startswith("STATUS=")]
        assert status and "devices enrolled" in status[0] and "no push certificate" in status[0]
        process.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", timeout=15)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=10)
    assert "event=stopped" in stderr
    assert "ts=" in stderr  # not under journald: our own timestamps


def test_in_flight_request_finishes_after_sigterm(tmp_path, notify):
    port = free_port()
    process = start(tmp_path, port, tmp_path / "notify.sock", JOURNAL_STREAM="8:1234")
    try:
        notify.wait_for("READY=1", timeout=30)
        context = ssl.create_default_context(cafile=str(tmp_path / "state" / "ca.crt"))
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
        body = b"x" * 2000
        conn.sendall(b"PUT /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:1000])
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", timeout=15)
        conn.sendall(body[1000:])
        answer = conn.recv(4096)
        assert answer.startswith(b"HTTP/1.1 405")  # answered, though the server was already stopping
        conn.close()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=10)
    assert not re.search(r"(^|\s)ts=", stderr, re.M)  # under journald the journal stamps each line


# A fault injected into one part after READY=1 (nothing real fails on cue in a healthy process): the
# status line's third refresh raises, as a bug in a part would.
CRASH_AFTER_READY = """
import appliance.supervisor as supervisor
supervisor.STATUS_REFRESH_SECONDS = 0.1
real, calls = supervisor.status_line, []
async def status_line(runtime):
    calls.append(1)
    if len(calls) == 3:
        raise RuntimeError("injected fault in a running part")
    return await real(runtime)
supervisor.status_line = status_line
from appliance.cli import main
main()
"""


def test_a_part_crashing_after_start_exits_non_zero_with_its_cause_and_traceback(tmp_path, notify):
    config = make_config(tmp_path, port=free_port(), logging={"level": "info"})
    environment = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "WATCHDOG_USEC")}
    environment.update(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-c", CRASH_AFTER_READY, "serve", "--config", str(config)],
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        notify.wait_for("READY=1", timeout=30)
        assert process.wait(timeout=30) == 1
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=10)
    assert "event=crashed" in stderr and "injected fault in a running part" in stderr
    assert "Traceback" in stderr  # a crash while serving is a bug: its traceback stays, at any level
    assert "startup_failed" not in stderr


async def test_notifier_speaks_to_abstract_addresses():
    name = f"mdm-appliance-test-{os.getpid()}"
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await receiver.bind("\0" + name)
    notifier = Notifier("@" + name)
    await notifier.notify("READY=1", "STATUS=hello")
    assert await receiver.recv(100) == b"READY=1\nSTATUS=hello"
    notifier.close()
    receiver.close()


def test_a_second_signal_stops_at_once_and_cleanly(tmp_path, notify):
    port = free_port()
    process = start(tmp_path, port, tmp_path / "notify.sock")
    try:
        notify.wait_for("READY=1", timeout=30)
        context = ssl.create_default_context(cafile=str(tmp_path / "state" / "ca.crt"))
        # An in-flight request that never completes would hold the grace period open: a device URL, whose
        # handler is reading the body when the signal comes (with /healthz this was flaky under load).
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
        conn.sendall(b"PUT /mdm/checkin HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        notify.wait_for("STOPPING=1", timeout=15)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 0  # well before the 5 s grace of the test config
        conn.close()
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=10)
    assert "event=stopping_now" in stderr and "event=store_closed" in stderr
    assert "crashed" not in stderr and "Traceback" not in stderr


def test_generated_api_key_path_is_logged_but_never_the_key(tmp_path, notify):
    port = free_port()
    config = make_config(tmp_path, port=port, api={"key": None})
    environment = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    environment.update(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--config", str(config)],
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        notify.wait_for("READY=1", timeout=30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=10)
    key = (tmp_path / "state" / "api.key").read_text().strip()
    assert len(key) >= 32
    assert f"path={tmp_path / 'state' / 'api.key'}" in stderr
    assert key not in stderr
