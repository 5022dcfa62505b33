"""A webhook receiver for tests: a tiny ASGI app on hypercorn in the test's nursery, on a fixed loopback
port so it can be stopped and started again where the appliance expects it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from tests.support.asgi import read_body, serve_lifespan


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict:
        return json.loads(self.body)

    def signed_with(self, key: str) -> bool:
        expected = base64.b64encode(hmac.new(key.encode(), self.body, hashlib.sha256).digest()).decode()
        return hmac.compare_digest(self.headers.get("x-hmac-signature", ""), expected)


@dataclass
class Receiver:
    port: int
    status: int = 200  # what to answer; deliveries answered with a non-2xx are not kept in `accepted`
    tls: tuple[str, str] | None = None  # (certfile, keyfile): serve https
    attempts: int = 0
    accepted: list[Delivery] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    async def app(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await serve_lifespan(receive, send)
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.attempts += 1
        status = self.status
        if 200 <= status < 300:
            self.accepted.append(Delivery(headers, body))
        self.changed.set()
        self.changed = trio.Event()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def run(self, stop: trio.Event, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.accesslog = None
        config.graceful_timeout = 1
        if self.tls is not None:
            config.certfile, config.keyfile = self.tls
        await serve(self.app, config, shutdown_trigger=stop.wait, task_status=task_status)

    async def wait_for(self, predicate, timeout: float = 20) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self.changed.wait()


class Running:
    """`async with Running(receiver):` serves it; leaving the block stops it (connections closed)."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def __aenter__(self):
        self._stop = trio.Event()
        self._nursery_manager = trio.open_nursery()
        nursery = await self._nursery_manager.__aenter__()
        await nursery.start(self.receiver.run, self._stop)
        return self.receiver

    async def __aexit__(self, *exc_info):
        self._stop.set()
        return await self._nursery_manager.__aexit__(*exc_info)
