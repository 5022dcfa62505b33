"""A small HTTP/2 client on trio, built directly on h2 (python-hyper), for hostile-traffic tests: it
controls the frames itself (a body still arriving after the answer, a reset mid-body, streams beyond
the server's limit). Imports nothing from appliance."""

from __future__ import annotations

import ssl
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import trio


@dataclass
class Exchange:
    """One request stream and what the server sent back on it."""

    stream_id: int
    status: int | None = None
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False  # the server's END_STREAM: a complete response
    reset_code: int | None = None  # the server's RST_STREAM error code
    done: trio.Event = field(default_factory=trio.Event)  # response complete, stream reset, or connection gone
    reset: trio.Event = field(default_factory=trio.Event)  # RST_STREAM received, or connection gone


class _LiteralEncoder(hpack.Encoder):
    """HPACK without Huffman coding: hpack's pure-Python Huffman encoder takes seconds for a 64 KiB value."""

    def encode(self, headers, huffman: bool = True) -> bytes:  # noqa: ARG002
        return super().encode(headers, huffman=False)


class H2Client:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.encoder = _LiteralEncoder()
        self.exchanges: dict[int, Exchange] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = trio.Event()  # the server ended the connection (GOAWAY or EOF)
        self.settings = trio.Event()  # the server's first SETTINGS arrived
        self._progress = trio.Event()  # set (and replaced) on every window update or reset
        self._send_lock = trio.Lock()

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            async with self._send_lock:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.closed.set()  # the server went away; the reader reports how

    async def _read(self) -> None:
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self._handle(self.conn.receive_data(data))
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.closed.set()
            for exchange in self.exchanges.values():
                exchange.done.set()
                exchange.reset.set()
            self._wake()

    def _handle(self, events) -> None:
        for event in events:
            exchange = self.exchanges.get(getattr(event, "stream_id", None) or 0)
            if isinstance(event, h2.events.ResponseReceived) and exchange:
                exchange.status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                if exchange:
                    exchange.body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and exchange:
                exchange.ended = True
                exchange.done.set()
            elif isinstance(event, h2.events.StreamReset) and exchange:
                exchange.reset_code = int(event.error_code)
                exchange.done.set()
                exchange.reset.set()
                self._wake()
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings.set()
                self._wake()
            elif isinstance(event, h2.events.WindowUpdated):
                self._wake()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
                self.closed.set()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def ignore_stream_limit(self) -> None:
        """Behave as a hostile client: open streams beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS."""
        values = dict(self.conn.remote_settings.items())
        values[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 2**31 - 1
        self.conn.remote_settings = h2.settings.Settings(client=False, initial_values=values)

    async def start(self, method: str, path: str, headers: list[tuple[str, str]] = (), *,
                    end_stream: bool = False) -> Exchange:
        """Send a request's headers (extra pseudo-headers such as :protocol first in `headers`); the
        body (if any) follows with send_body."""
        stream_id = self.conn.get_next_available_stream_id()
        exchange = self.exchanges[stream_id] = Exchange(stream_id)
        if self.closed.is_set():  # after GOAWAY: nothing more goes out
            exchange.done.set()
            exchange.reset.set()
            return exchange
        request = [(":method", method), (":scheme", "https"), (":authority", "127.0.0.1"), (":path", path)]
        pseudo = [header for header in headers if header[0].startswith(":")]
        regular = [header for header in headers if not header[0].startswith(":")]
        self.conn.send_headers(stream_id, request + pseudo + regular, end_stream=end_stream)
        await self._flush()
        return exchange

    async def send_body(self, exchange: Exchange, data: bytes, *, end_stream: bool = True) -> int:
        """Send `data` as flow control allows; stops early if the server resets the stream or goes
        away. Returns how many bytes went out."""
        sent = 0
        while True:
            if exchange.reset_code is not None or self.closed.is_set():
                return sent
            progress = self._progress
            try:
                window = min(self.conn.local_flow_control_window(exchange.stream_id),
                             self.conn.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                return sent
            if sent < len(data) and window <= 0:
                await progress.wait()
                continue
            chunk = data[sent:sent + window]
            sent += len(chunk)
            self.conn.send_data(exchange.stream_id, chunk, end_stream=end_stream and sent == len(data))
            await self._flush()
            if sent == len(data):
                return sent

    async def reset(self, exchange: Exchange, code: int = 8) -> None:  # 8: CANCEL
        self.conn.reset_stream(exchange.stream_id, code)
        await self._flush()

    async def request(self, method: str, path: str, headers: list[tuple[str, str]] = (),
                      body: bytes = b"") -> Exchange:
        """A whole request; returns once the server finished (or reset) the stream."""
        exchange = await self.start(method, path, headers, end_stream=not body)
        if body:
            await self.send_body(exchange, body)
        await exchange.done.wait()
        return exchange


@asynccontextmanager
async def connect(host: str, port: int, context: ssl.SSLContext | None = None):
    """An HTTP/2 connection: TLS with ALPN h2 when `context` is given, else cleartext prior knowledge."""
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if context is not None:
        context.set_alpn_protocols(["h2"])
        # hypercorn closes TLS without close_notify (STACK.md).
        stream = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
        await stream.do_handshake()
        assert stream.selected_alpn_protocol() == "h2"
    client = H2Client(stream)
    client.conn.initiate_connection()
    async with stream, trio.open_nursery() as nursery:
        await client._flush()
        nursery.start_soon(client._read)
        with trio.fail_after(10):
            await client.settings.wait()
        yield client
        nursery.cancel_scope.cancel()
