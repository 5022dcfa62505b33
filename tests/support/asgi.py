"""The two chores every small ASGI stand-in in tests/ has: the lifespan handshake and reading a whole body."""

from __future__ import annotations


async def serve_lifespan(receive, send) -> None:
    """Answer hypercorn's lifespan startup and shutdown (a stand-in has nothing to set up)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body
