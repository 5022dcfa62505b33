"""A scriptable stand-in for APNs: a real HTTP/2 TLS server (h2 on trio) that requires a client cert.

It records every request it processed (headers, body, the client certificate) and can be told to
answer per token, change SETTINGS_MAX_CONCURRENT_STREAMS mid-connection, send GOAWAY after N
streams, drop the connection after N streams, refuse everything, or delay answers.

Run alone (for the benchmark, in its own process):
    python tests/support/apns_standin.py --cert server.pem --key server.key --client-ca ca.pem --port-file F
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import uuid
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio
from hyperframe.frame import GoAwayFrame


@dataclass
class Answer:
    status: int = 200
    reason: str | None = None
    timestamp: int | None = None


@dataclass
class Recorded:
    headers: dict[str, str]
    body: bytes
    client_cert: bytes
    connection: int
    stream_id: int

    @property
    def token(self) -> str:
        return self.headers[":path"].rsplit("/", 1)[-1]


@dataclass
class StandIn:
    ssl_context: ssl.SSLContext
    max_streams: int = 1000
    initial_window: int = 65535
    answers: dict[str, Answer] = field(default_factory=dict)
    refuse: str | None = None  # None | "tls" | "403" | "500"
    delay: float = 0.0
    hold: trio.Event | None = None  # answers wait until this is set
    goaway_after: int | None = None  # once: GOAWAY after the N-th request of a connection
    goaway_reason: str = "Shutdown"
    drop_after: int | None = None  # once: close the socket on the N-th request, unanswered
    stall_after: int | None = None  # once: on the N-th request go silent (no answers, no PING acks, no FIN)
    record: bool = True
    requests: list[Recorded] = field(default_factory=list)
    ignored: list[int] = field(default_factory=list)  # stream ids above a GOAWAY's last id
    connections: int = 0
    handshakes: int = 0
    max_open_seen: int = 0
    pings: int = 0
    port: int = 0
    _live: list = field(default_factory=list)

    @classmethod
    def create(cls, server_cert_pem: bytes, server_key_pem: bytes, client_ca_pem: bytes, **kw):
        import os
        import tempfile

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=client_ca_pem.decode())
        ctx.set_alpn_protocols(["h2"])
        with tempfile.TemporaryDirectory() as d:
            c, k = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
            for path, data in ((c, server_cert_pem), (k, server_key_pem)):
                with open(path, "wb") as f:
                    f.write(data)
            ctx.load_cert_chain(c, k)
        return cls(ssl_context=ctx, **kw)

    def open_streams(self) -> int:
        return sum(c.open for c in self._live)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def tokens(self) -> list[str]:
        return [r.token for r in self.requests]

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen (again on the same port, after a stop: APNs coming back) until cancelled."""
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def set_max_streams(self, n: int) -> None:
        """Change SETTINGS_MAX_CONCURRENT_STREAMS on every live connection (and for new ones)."""
        self.max_streams = n
        for conn in list(self._live):
            await conn.update_max_streams(n)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        self.connections += 1
        if self.refuse == "tls":
            await tcp.aclose()
            return
        stream = trio.SSLStream(tcp, self.ssl_context, server_side=True, https_compatible=True)
        try:
            with trio.fail_after(5):
                await stream.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError, OSError):
            await trio.aclose_forcefully(stream)
            return
        self.handshakes += 1
        conn = _ServerConnection(self, stream, self.connections)
        self._live.append(conn)
        try:
            await conn.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError,
                h2.exceptions.ProtocolError):
            pass
        finally:
            self._live.remove(conn)
            await trio.aclose_forcefully(stream)


class _Closed(Exception):
    pass


class _ServerConnection:
    def __init__(self, standin: StandIn, stream: trio.SSLStream, number: int):
        self.s = standin
        self.stream = stream
        self.number = number
        self.client_cert = stream.getpeercert(binary_form=True) or b""
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.lock = trio.Lock()
        self.requests: dict[int, list] = {}  # stream id -> [headers, body]
        self.open = 0
        self.count = 0
        self.goaway_last: int | None = None
        self.unanswered_below_goaway = 0
        self.done = trio.Event()

    async def flush(self) -> None:
        async with self.lock:
            data = self.h2.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def update_max_streams(self, n: int) -> None:
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: n})
        await self.flush()

    async def run(self) -> None:
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.s.max_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.s.initial_window,
            },
        )
        self.h2.initiate_connection()
        await self.flush()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                await self._read()
            except _Closed:
                pass
            nursery.cancel_scope.cancel()

    async def _read(self) -> None:
        while True:
            if self.done.is_set():
                raise _Closed
            data = await self.stream.receive_some(65536)
            if not data:
                raise _Closed
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    self.requests[event.stream_id] = [dict(event.headers), b""]
                    self.open += 1
                    self.s.max_open_seen = max(self.s.max_open_seen, self.open)
                elif isinstance(event, h2.events.DataReceived):
                    self.requests[event.stream_id][1] += event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    await self._request_done(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    if self.requests.pop(event.stream_id, None) is not None:
                        self.open -= 1
                elif isinstance(event, h2.events.PingReceived):
                    self.s.pings += 1
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise _Closed
            await self.flush()

    async def _request_done(self, stream_id: int) -> None:
        if self.goaway_last is not None and stream_id > self.goaway_last:
            self.s.ignored.append(stream_id)  # above our GOAWAY: never processed
            self.requests.pop(stream_id, None)
            self.open -= 1
            return
        self.count += 1
        if self.s.stall_after is not None and self.count >= self.s.stall_after:
            self.s.stall_after = None
            await trio.sleep_forever()  # a dead link: the socket stays open, nothing comes back
        if self.s.drop_after is not None and self.count >= self.s.drop_after:
            self.s.drop_after = None
            raise _Closed  # abrupt: no answer, no GOAWAY
        headers, body = self.requests[stream_id]
        if self.s.record:
            self.s.requests.append(
                Recorded(headers, body, self.client_cert, self.number, stream_id))
        if self.s.delay or self.s.hold is not None:
            self.nursery.start_soon(self._answer_later, stream_id)
        else:
            self._answer(stream_id)
        if self.s.goaway_after is not None and self.count >= self.s.goaway_after:
            self.s.goaway_after = None
            await self._send_goaway(stream_id)

    async def _send_goaway(self, last: int) -> None:
        # written raw: h2 would refuse to send our pending answers after its own GOAWAY, but a
        # graceful server (RFC 9113 §6.8) still finishes the streams up to last_stream_id
        self.goaway_last = last
        frame = GoAwayFrame(0, last_stream_id=last, error_code=0,
                            additional_data=json.dumps({"reason": self.s.goaway_reason}).encode())
        await self.flush()
        async with self.lock:
            await self.stream.send_all(frame.serialize())
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.goaway_last is not None and not any(
                sid <= self.goaway_last for sid in self.requests):
            self.done.set()
            self.nursery.start_soon(self._close_soon)

    async def _close_soon(self) -> None:
        await self.flush()
        await trio.sleep(0.05)
        await self.stream.aclose()

    async def _answer_later(self, stream_id: int) -> None:
        if self.s.hold is not None:
            await self.s.hold.wait()
        await trio.sleep(self.s.delay)
        if stream_id in self.requests:
            self._answer(stream_id)
            await self.flush()

    def _answer(self, stream_id: int) -> None:
        headers, _ = self.requests.pop(stream_id)
        self.open -= 1
        token = headers.get(":path", "").rsplit("/", 1)[-1]
        if self.s.refuse == "403":
            answer = Answer(403, "BadCertificate")
        elif self.s.refuse == "500":
            answer = Answer(500, "InternalServerError")
        else:
            answer = self.s.answers.get(token, Answer())
        response = [(":status", str(answer.status)), ("apns-id", str(uuid.uuid4()).upper())]
        if answer.status == 200:
            self.h2.send_headers(stream_id, response, end_stream=True)
        else:
            doc = {"reason": answer.reason}
            if answer.timestamp is not None:
                doc["timestamp"] = answer.timestamp
            body = json.dumps(doc).encode()
            response.append(("content-type", "application/json"))
            self.h2.send_headers(stream_id, response)
            self.h2.send_data(stream_id, body, end_stream=True)
        if self.goaway_last is not None:
            self._maybe_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--max-streams", type=int, default=1000)
    args = parser.parse_args()
    def read(path):
        with open(path, "rb") as f:
            return f.read()

    standin = StandIn.create(read(args.cert), read(args.key), read(args.client_ca),
                             max_streams=args.max_streams, record=False)

    async def run():
        async with trio.open_nursery() as nursery:
            port = await nursery.start(standin.serve)
            with open(args.port_file, "w") as f:
                f.write(str(port))

    try:
        trio.run(run)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
