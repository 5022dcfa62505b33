"""Shared pieces of the MDM protocol tests: a server that trusts a test device CA, enqueueing through the
store API (until the admin API is the way in), and a full dump of the database for before/after checks."""

from __future__ import annotations

import os
import plistlib
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from appliance.clock import SYSTEM, Clock
from appliance.store import queue
from tests.support.device_sim import DeviceSim, TestCA
from tests.support.harness import Server, make_config, start_server


@dataclass
class MdmServer:
    server: Server
    ca: TestCA

    def device(self, udid: str, *, key_type: str = "rsa", **kwargs) -> DeviceSim:
        cert, key = self.ca.issue(udid, key_type=key_type)
        return DeviceSim(self.server.base_url, self.server.ssl_context(), cert, key, udid, **kwargs)

    async def enqueue(self, command_uuid: str, enrollment_ids: list[str], request_type: str = "DeviceInformation",
                      **keys) -> bytes:
        body = command_body(command_uuid, request_type, **keys)
        outcome = await self.server.runtime.store.write(queue.enqueue, command_uuid, request_type, body,
                                                        enrollment_ids)
        assert all(error is None for error in outcome.values()), outcome
        return body

    async def dump(self) -> str:
        return await self.server.runtime.store.read(lambda conn: "\n".join(conn.iterdump()))

    async def rows(self, sql: str, *args) -> list[dict]:
        return await self.server.runtime.store.read(
            lambda conn: [dict(row) for row in conn.execute(sql, args).fetchall()])


def command_body(command_uuid: str, request_type: str = "DeviceInformation", **keys) -> bytes:
    return plistlib.dumps({"CommandUUID": command_uuid, "Command": {"RequestType": request_type, **keys}})


async def start_mdm_server(nursery, tmp_path: Path, *, clock: Clock = SYSTEM, **overrides: dict) -> MdmServer:
    ca = TestCA("MDM Test Device CA", directory=tmp_path)
    identity = {"trusted_ca_files": [str(ca.pem_path)], **overrides.pop("identity", {})}
    config = make_config(tmp_path, identity=identity, **overrides)
    return MdmServer(await start_server(nursery, config, clock), ca)


class ServerProcess:
    """`python -m appliance serve` as a child process (for crash tests and benchmarks); log in log_path."""

    def __init__(self, config_path: Path, port: int, log_path: Path, python_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.config_path, self.port, self.log_path = config_path, port, log_path
        self.python_args = python_args  # e.g. ("-m", "cProfile", "-o", "serve.prof") for benchmarks
        self.env = env or {}  # e.g. NOTIFY_SOCKET, LD_PRELOAD
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self.python_args, "-m", "appliance", "serve", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        with trio.fail_after(timeout):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log_path}")
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                return

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
