"""Starting the real appliance for tests: a config file in tmp_path, the real server in the test's
nursery on a free loopback port with real TLS and a real SQLite file, and TLS-verifying clients.

Time: `start_server(..., clock=OffsetClock())` runs the server on a clock the test advances
(`server.clock.advance(timedelta(days=300))`): certificate dates, challenge and command expiry, backoff
and the workers that wait for them all follow it, with no real sleep."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import trio

from appliance.clock import SYSTEM, Clock
from appliance.config import Config, load_config
from appliance.runtime import Runtime
from appliance.supervisor import Serving, serve

API_KEY = "test-api-key-0123456789abcdef"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def write_toml(path: Path, sections: dict[str, dict]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def make_config(tmp_path: Path, port: int = 0, **overrides: dict) -> Path:
    """A config for a test server: state in tmp_path/state, loopback, TLS with a generated certificate.
    overrides: section name -> {key: value} merged over the defaults (None removes a key)."""
    sections: dict[str, dict] = {
        "server": {"listen": f"127.0.0.1:{port}", "public_url": "https://127.0.0.1:8443", "shutdown_grace": 5},
        "storage": {"data_dir": "state"},
        "api": {"key": API_KEY},
        "enrollment": {"scep_challenge": "test-challenge", "secret": "test-enroll-secret"},
        "logging": {"level": "debug"},
        # Off unless a test is about inventory: the others expect a queue holding only what they enqueue.
        "inventory": {"commands": []},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    return write_toml(tmp_path / "appliance.toml", sections)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    serving: Serving
    config: Config
    config_path: Path
    finished: trio.Event
    clock: Clock = SYSTEM

    @property
    def runtime(self) -> Runtime:
        return self.serving.runtime

    @property
    def base_url(self) -> str:
        return self.serving.binds[0]

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    @property
    def api_url(self) -> str:
        return (self.serving.api_binds or self.serving.binds)[0]

    @property
    def ca_file(self) -> Path:
        """The CA that issued the server's TLS certificate (clients trust this)."""
        return self.config.data_dir / "ca.crt"

    @property
    def api_key(self) -> str:
        return self.runtime.api_key

    def ssl_context(self, **client_cert) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if client_cert:
            context.load_cert_chain(**client_cert)
        return context

    def client(self, **kwargs) -> httpx.AsyncClient:
        """An httpx client for the device listener that verifies the server's TLS certificate."""
        return httpx.AsyncClient(base_url=self.base_url, verify=self.ssl_context(), timeout=30, **kwargs)

    def api_client(self, **kwargs) -> httpx.AsyncClient:
        """An httpx client for the admin API, authenticated with the API key (Bearer)."""
        headers = {"Authorization": f"Bearer {self.api_key}", **kwargs.pop("headers", {})}
        return httpx.AsyncClient(base_url=self.api_url, verify=self.ssl_context(), timeout=60,
                                 headers=headers, **kwargs)

    def stop(self) -> None:
        self.serving.stop.set()

    async def aclose(self) -> None:
        """Graceful stop, as on SIGTERM, and wait until serve() has returned (database closed)."""
        self.stop()
        await self.finished.wait()


async def _serve_until_done(config: Config, finished: trio.Event, clock: Clock, *, task_status) -> None:
    try:
        await serve(config, handle_signals=False, clock=clock, task_status=task_status)
    finally:
        finished.set()


async def start_server(nursery, config_path: Path, clock: Clock = SYSTEM) -> Server:
    """The appliance on `config_path`, serving in `nursery`; `clock` is the time it keeps (an
    appliance.clock.OffsetClock for tests that move time)."""
    config = load_config(config_path)
    finished = trio.Event()
    serving = await nursery.start(partial(_serve_until_done, config, finished, clock))
    return Server(serving, config, config_path, finished, clock)
