"""APNs client: one long-lived HTTP/2 connection (h2 over trio.SSLStream), many pushes multiplexed.

Shape: `APNsClient.run()` owns the connection loop (connect on demand, reconnect with jittered
exponential backoff); each live connection has a reader task, a writer task (the only one that
writes the socket, so the frames of many streams leave in one TLS write) and a watchdog
(per-push timeout, PING when idle, drain after GOAWAY or a certificate swap). Pushes wait in
one queue; the writer opens streams while fewer than min(own cap, server's current
SETTINGS_MAX_CONCURRENT_STREAMS) are in flight.
"""

from __future__ import annotations

import enum
import json
import os
import random
import ssl
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h2.config
import h2.events
import h2.exceptions
import trio
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes

from appliance.push.pushcert import PushCertificate

DEFAULT_URL = "https://api.push.apple.com"
DEFAULT_EXPIRATION = 3 * 86400  # seconds; a device offline for a weekend still gets the push


class PushStatus(str, enum.Enum):
    OK = "ok"
    UNREGISTERED = "unregistered"  # 410: token no longer valid (APNs gives a timestamp)
    REJECTED = "rejected"  # 400/413/...: BadDeviceToken, DeviceTokenNotForTopic, ...
    CERTIFICATE = "certificate"  # 403: the push certificate is the problem
    THROTTLED = "throttled"  # 429: too many pushes to this token; back off
    FAILED = "failed"  # 5xx / connection / timeout, after bounded retries


@dataclass(frozen=True, slots=True)
class PushResult:
    status: PushStatus
    http_status: int = 0
    apns_id: str | None = None
    reason: str | None = None
    timestamp: int | None = None  # 410: ms since the epoch when the token became invalid
    retry_after: float | None = None  # THROTTLED: seconds until this token may be pushed again

    @property
    def ok(self) -> bool:
        return self.status is PushStatus.OK

    def describe(self) -> str:
        """A short reason for logs and the API's push_error."""
        if self.ok:
            return "ok"
        text = self.reason or self.status.value
        return f"{self.http_status} {text}" if self.http_status else text


class _Lost(Exception):
    """The connection is gone (message says why)."""


class _Push:
    __slots__ = ("token", "path", "body", "attempts", "batch", "index", "sent_at", "done")

    def __init__(self, token: str, body: bytes, batch: _Batch, index: int):
        self.token = token
        self.path = b"/3/device/" + token.encode()
        self.body = body
        self.attempts = 0
        self.batch = batch
        self.index = index
        self.sent_at = 0.0
        self.done = False

    def finish(self, result: PushResult) -> None:
        if not self.done:
            self.done = True
            self.batch.finish(self.index, result)


class _Batch:
    """Completion for a group of pushes: one Event, not one per push."""

    __slots__ = ("results", "remaining", "event")

    def __init__(self, n: int):
        self.results: list[PushResult | None] = [None] * n
        self.remaining = n
        self.event = trio.Event()

    def finish(self, index: int, result: PushResult) -> None:
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0:
            self.event.set()


class _H2(H2Connection):
    """h2's connection with three adjustments for a client that only ever sends pushes."""

    def __init__(self, streams: dict, **kwargs):
        super().__init__(**kwargs)
        self.encoder = _Encoder()
        self._apns_streams = streams
        self._ended = 0

    @property
    def open_outbound_streams(self) -> int:
        # h2 counts open streams by scanning all of them on every send_headers (cost grows with
        # concurrency); our own table of in-flight pushes holds the same number.
        return len(self._apns_streams)

    def purge_closed_streams(self) -> None:
        """h2 forgets closed streams only while counting them: let it, now and then."""
        self._ended += 1
        if self._ended % 256 == 0:
            H2Connection.open_outbound_streams.fget(self)

    def _receive_goaway_frame(self, frame):
        frames, events = super()._receive_goaway_frame(frame)
        # h2 treats a received GOAWAY as the end of everything, but RFC 9113 §6.8 lets the server
        # still finish the streams up to last_stream_id. Keep the connection readable so their
        # answers are not lost; we never open new streams on a draining connection.
        if self.state_machine.state is ConnectionState.CLOSED:
            self.state_machine.state = ConnectionState.CLIENT_OPEN
        return frames, events


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out = bytearray([limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_HPACK_STATIC = {(b":method", b"POST"): b"\x83", (b":scheme", b"https"): b"\x87"}  # RFC 7541 App. A
_HPACK_NAMES = {b":authority": 1, b":path": 4}


class _Encoder:
    """HPACK for our requests: static-table entries and literals without indexing, no Huffman.

    Never touching the dynamic table keeps the server's decoder state trivially in step, and the
    encoded form of every repeated header is cached: hpack's general encoder (table search and
    Huffman coding per header) was the largest single cost of a push.
    """

    header_table_size = 4096  # h2 sets it on SETTINGS_HEADER_TABLE_SIZE; we never use the table

    def __init__(self):
        self._cache: dict[tuple, bytes] = {}

    def encode(self, headers, huffman: bool = True) -> bytes:
        cache = self._cache
        parts = []
        for header in headers:
            block = cache.get(header)
            if block is None:
                name, value = header
                block = _HPACK_STATIC.get((name, value))
                if block is None:
                    index = _HPACK_NAMES.get(name)
                    head = _hpack_int(index, 4) if index else b"\x00" + _hpack_int(len(name), 7) + name
                    block = head + _hpack_int(len(value), 7) + value
                if name != b":path":  # one per device token: not worth keeping
                    if len(cache) > 64:
                        cache.clear()
                    cache[header] = block
            parts.append(block)
        return b"".join(parts)


def _token_hex(token: str | bytes) -> str | None:
    if isinstance(token, (bytes, bytearray, memoryview)):
        return bytes(token).hex() if token else None
    token = token.strip().lower()
    if not token or len(token) % 2 or len(token) > 400:
        return None
    try:
        bytes.fromhex(token)
    except ValueError:
        return None
    return token


def push_body(push_magic: str) -> bytes:
    """Exactly {"mdm":"<PushMagic>"}: no spaces, no aps key."""
    return b'{"mdm":' + json.dumps(push_magic).encode() + b"}"


class APNsClient:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        certificate: PushCertificate | None = None,
        ca_file: str | os.PathLike | None = None,
        expiration: float = DEFAULT_EXPIRATION,
        timeout: float = 10.0,
        max_streams: int = 100,
        max_attempts: int = 3,
        ping_interval: float = 60.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        throttle_initial: float = 60.0,
        log=None,
    ):
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"APNs url must be https://host[:port], got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.authority = (self.host if self.port == 443 else f"{self.host}:{self.port}").encode()
        self.ca_file = os.fspath(ca_file) if ca_file else None
        self.expiration = max(1.0, float(expiration))
        self.timeout = timeout
        self.max_streams = max(1, max_streams)
        self.max_attempts = max(1, max_attempts)
        self.ping_interval = ping_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.throttle_initial = throttle_initial
        self.log = log
        self._pending: deque[_Push] = deque()
        self._delayed: set[_Push] = set()  # waiting out a retry backoff
        self._demand = trio.Event()
        self._conn: _Connection | None = None
        self._throttled: dict[str, tuple[float, float]] = {}  # token -> (until, last delay)
        self._nursery: trio.Nursery | None = None
        self._certificate: PushCertificate | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._generation = 0  # bumps on every certificate change
        self._reconnect = False
        self._topic = b""
        self.cert_error: str | None = None  # last 403 reason while the current cert is in use
        self.last_connection_error: str | None = None
        self.connected = False
        self.stats = {"connects": 0, "connect_failures": 0, "sent": 0, "retries": 0}
        if certificate is not None:
            self.set_certificate(certificate)

    # ----- certificate -------------------------------------------------------------------
    @property
    def certificate(self) -> PushCertificate | None:
        return self._certificate

    def set_certificate(self, certificate: PushCertificate | None) -> None:
        """Use a new identity: the live connection drains and the next one presents the new cert."""
        self._ssl_context = self._make_context(certificate) if certificate else None
        self._certificate = certificate
        self._generation += 1
        self._topic = certificate.topic.encode() if certificate else b""
        self.cert_error = None
        if self._conn is not None:
            self._conn.retire()
            self._reconnect = certificate is not None  # reconnect now, with the new identity
        self._demand.set()

    def _make_context(self, certificate: PushCertificate) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["h2"])
        # ssl can only load a client identity from files: a private temporary folder, removed at once
        with tempfile.TemporaryDirectory(prefix="apns-") as folder:
            cert_path = os.path.join(folder, "cert.pem")
            key_path = os.path.join(folder, "key.pem")
            for path, data in ((cert_path, certificate.cert_pem), (key_path, certificate.key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            ctx.load_cert_chain(cert_path, key_path)
        return ctx

    # ----- pushing -----------------------------------------------------------------------
    async def push(self, token: str | bytes, push_magic: str) -> PushResult:
        return (await self.push_many([(token, push_magic)]))[0]

    async def push_many(self, items: Iterable[tuple[str | bytes, str]]) -> list[PushResult]:
        """Push to every (token, push magic); results in the same order. Never raises for APNs errors."""
        items = list(items)
        batch = _Batch(len(items))
        if not items:
            return []
        now = trio.current_time()
        queued = 0
        for index, (token, magic) in enumerate(items):
            hex_token = _token_hex(token)
            if hex_token is None:
                batch.finish(index, PushResult(PushStatus.REJECTED, reason="InvalidTokenFormat"))
                continue
            if self._certificate is None:
                batch.finish(index, PushResult(PushStatus.FAILED, reason="NoPushCertificate"))
                continue
            throttled = self._throttled.get(hex_token)
            if throttled and throttled[0] > now:
                batch.finish(
                    index,
                    PushResult(PushStatus.THROTTLED, 429, reason="TooManyRequests",
                               retry_after=throttled[0] - now),
                )
                continue
            self._pending.append(_Push(hex_token, push_body(magic), batch, index))
            queued += 1
        if queued:
            self._kick()
        try:
            await batch.event.wait()
        except BaseException:
            # the caller gave up (cancelled): do not leave its pushes in the queue
            if batch.remaining:
                self._pending = deque(p for p in self._pending if p.batch is not batch)
            raise
        return batch.results  # type: ignore[return-value]

    def _kick(self) -> None:
        self._demand.set()
        if self._conn is not None:
            self._conn.wake.set()

    # ----- outcomes (called by connections) ----------------------------------------------
    def _complete(self, push: _Push, status: int, apns_id: str | None, body: bytes) -> None:
        if status == 200:
            if self.cert_error:
                self.cert_error = None
            push.finish(PushResult(PushStatus.OK, 200, apns_id=apns_id))
            return
        reason, timestamp = None, None
        if body:
            try:
                doc = json.loads(body)
                reason = doc.get("reason")
                timestamp = doc.get("timestamp")
            except (ValueError, AttributeError):
                reason = None
        if status == 410:
            push.finish(PushResult(PushStatus.UNREGISTERED, 410, apns_id, reason or "Unregistered",
                                   int(timestamp) if isinstance(timestamp, (int, float)) else None))
        elif status == 403:
            if self.cert_error != (reason or "Forbidden") and self.log:
                self.log.error("apns_certificate_rejected", reason=reason or "Forbidden",
                               topic=self._topic.decode())
            self.cert_error = reason or "Forbidden"
            push.finish(PushResult(PushStatus.CERTIFICATE, 403, apns_id, self.cert_error))
        elif status == 429:
            now = trio.current_time()
            last = self._throttled.get(push.token, (0.0, 0.0))[1]
            delay = min(max(self.throttle_initial, last * 2), 3600.0)
            self._throttled[push.token] = (now + delay, delay)
            if len(self._throttled) > 10000:
                self._throttled = {k: v for k, v in self._throttled.items() if v[0] > now}
            push.finish(PushResult(PushStatus.THROTTLED, 429, apns_id, reason or "TooManyRequests",
                                   retry_after=delay))
        elif status >= 500:
            self._retry(push, PushResult(PushStatus.FAILED, status, apns_id, reason))
        else:
            push.finish(PushResult(PushStatus.REJECTED, status, apns_id, reason))

    def _retry(self, push: _Push, failure: PushResult) -> None:
        """Try again later (bounded); the caller's push fails with `failure` when attempts run out."""
        push.attempts += 1
        if push.attempts >= self.max_attempts or self._nursery is None:
            push.finish(failure)
            return
        self.stats["retries"] += 1
        delay = self._backoff(push.attempts, cap=self.backoff_max)
        self._delayed.add(push)
        self._nursery.start_soon(self._requeue_later, push, delay)

    async def _requeue_later(self, push: _Push, delay: float) -> None:
        await trio.sleep(delay)
        self._delayed.discard(push)
        if not push.done:
            self._pending.appendleft(push)
            self._kick()

    def _requeue_front(self, pushes: list[_Push]) -> None:
        for push in reversed(pushes):
            if not push.done:
                self._pending.appendleft(push)

    def _backoff(self, failures: int, cap: float | None = None) -> float:
        base = min(cap or self.backoff_max, self.backoff_initial * (2 ** (failures - 1)))
        return base * random.uniform(0.5, 1.0)  # jitter: many appliances must not reconnect in step

    def _charge_pending(self, reason: str) -> None:
        """A connection attempt failed: each waiting push used one attempt."""
        keep = deque()
        for push in self._pending:
            if push.done:
                continue
            push.attempts += 1
            if push.attempts >= self.max_attempts:
                push.finish(PushResult(PushStatus.FAILED, reason=reason))
            else:
                keep.append(push)
        self._pending = keep

    def _fail_all(self, reason: str) -> None:
        while self._pending:
            self._pending.popleft().finish(PushResult(PushStatus.FAILED, reason=reason))

    def _fail_everything(self, reason: str) -> None:
        """The client stops: nobody may wait forever for a push that will never be sent."""
        self._fail_all(reason)
        for push in self._delayed:
            push.finish(PushResult(PushStatus.FAILED, reason=reason))
        self._delayed.clear()

    # ----- connection loop -----------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._connection_loop()
        finally:
            self._nursery = None
            self._fail_everything("ClientStopped")

    async def _connection_loop(self) -> None:
        failures = 0
        while True:
            await self._demand.wait()
            self._demand = trio.Event()
            self._pending = deque(p for p in self._pending if not p.done)
            if not self._pending and not self._reconnect:
                continue
            self._reconnect = False
            if self._certificate is None:
                self._fail_all("NoPushCertificate")
                continue
            generation = self._generation
            try:
                conn = await self._connect()
            except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.TooSlowError, _Lost,
                    h2.exceptions.ProtocolError) as e:
                failures += 1
                reason = _describe(e)
                self.last_connection_error = reason
                self.stats["connect_failures"] += 1
                delay = self._backoff(failures)
                if self.log:
                    self.log.warning("apns_connect_failed", error=reason, failures=failures,
                                     retry_in=round(delay, 2))
                self._charge_pending(f"ConnectionFailed: {reason}")
                await trio.sleep(delay)
                self._demand.set()
                continue
            self.stats["connects"] += 1
            self.connected = True
            started = trio.current_time()
            if generation != self._generation:
                conn.retire()
            self._conn = conn
            try:
                reason = await conn.serve()
            finally:
                self._conn = None
                self.connected = False
            healthy = reason is None or conn.answered > 0 or trio.current_time() - started > 10
            failures = 0 if healthy else failures + 1
            if reason and self.log:
                self.log.info("apns_connection_closed", reason=reason, answered=conn.answered)
            if reason:
                self.last_connection_error = reason
            if failures:
                await trio.sleep(self._backoff(failures))
            if self._pending:
                self._demand.set()

    async def _connect(self) -> _Connection:
        with trio.fail_after(self.timeout):
            tcp = await trio.open_tcp_stream(self.host, self.port)
            stream = trio.SSLStream(tcp, self._ssl_context, server_hostname=self.host,
                                    https_compatible=True)
            try:
                await stream.do_handshake()
                if stream.selected_alpn_protocol() != "h2":
                    raise _Lost("server did not negotiate ALPN h2")
                conn = _Connection(self, stream)
                await conn.start()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return conn


_CONFIG = h2.config.H2Configuration(
    client_side=True,
    header_encoding=None,
    # our headers are fixed and known-good; h2's per-header checks cost ~15 % of a push
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
)


class _Connection:
    def __init__(self, client: APNsClient, stream: trio.SSLStream):
        self.client = client
        self.stream = stream
        self.streams: dict[int, _Push] = {}
        self.h2 = _H2(self.streams, config=_CONFIG)
        self.responses: dict[int, list] = {}  # stream id -> [status, apns-id, body chunks]
        self.blocked: dict[int, bytes] = {}  # request bodies waiting for flow-control window
        self.cap = 0
        self.wake = trio.Event()
        self.draining = False
        self.goaway_last_id: int | None = None
        self.lost: str | None = None
        self.answered = 0
        self.last_received = trio.current_time()
        self.ping_deadline: float | None = None
        self._cancel = trio.CancelScope()

    async def start(self) -> None:
        """Send our preface and wait for the server's first SETTINGS: only then is the stream cap known."""
        self.h2.initiate_connection()
        await self.stream.send_all(self.h2.data_to_send())
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                raise _Lost("closed before SETTINGS")
            got_settings = False
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    got_settings = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise _Lost(f"GOAWAY before first request: {_goaway_reason(event)}")
            if got_settings:
                self._update_cap()
                return

    def _update_cap(self) -> None:
        self.cap = min(self.client.max_streams, self.h2.remote_settings.max_concurrent_streams)

    def retire(self) -> None:
        """Finish what is in flight, open nothing new, then close."""
        self.draining = True
        self.wake.set()

    async def serve(self) -> str | None:
        """Run until the connection ends; returns why (None for a clean retirement)."""
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, self._reader)
                    nursery.start_soon(self._guard, self._writer)
                    nursery.start_soon(self._guard, self._watchdog)
        finally:
            self._settle()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
        return self.lost

    async def _guard(self, fn) -> None:
        try:
            await fn()
        except _Retired:
            pass
        except _Lost as e:
            if self.lost is None:
                self.lost = str(e)
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError,
                h2.exceptions.ProtocolError) as e:
            if self.lost is None:
                self.lost = _describe(e)
        self._cancel.cancel()

    def _settle(self) -> None:
        """Hand every unanswered push back: resend what the server never took, fail the rest."""
        client = self.client
        resend = []
        for stream_id, push in sorted(self.streams.items()):
            if push.done:
                continue
            if self.goaway_last_id is not None and stream_id <= self.goaway_last_id:
                # the server may have processed it: APNs says not to resend these blindly
                push.finish(PushResult(PushStatus.FAILED, reason="ConnectionClosedAfterGoaway"))
            elif self.goaway_last_id is not None:
                resend.append(push)  # never processed: safe, and owed, to send again
            else:
                push.attempts += 1
                if push.attempts >= client.max_attempts:
                    push.finish(PushResult(PushStatus.FAILED,
                                           reason=f"ConnectionLost: {self.lost or 'closed'}"))
                else:
                    resend.append(push)
        self.streams.clear()
        client._requeue_front(resend)

    # ----- writer: the only task that writes to the socket --------------------------------
    async def _writer(self) -> None:
        h2conn = self.h2
        send_all = self.stream.send_all
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            if self.blocked:
                self._send_blocked()
            if not self.draining and self.client._pending:
                self._open_streams()
            data = h2conn.data_to_send()
            if data:
                await send_all(data)
            if self.draining and not self.streams:
                h2conn.close_connection()
                data = h2conn.data_to_send()
                if data:
                    await send_all(data)
                raise _Retired()

    def _open_streams(self) -> None:
        client = self.client
        pending = client._pending
        h2conn = self.h2
        streams = self.streams
        send_headers = h2conn.send_headers
        send_data = h2conn.send_data
        next_id = h2conn.get_next_available_stream_id
        window = h2conn.local_flow_control_window
        now = trio.current_time()
        expiration = str(int(time.time() + client.expiration)).encode()
        head = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", client.authority)]
        tail = [(b"apns-topic", client._topic), (b"apns-push-type", b"mdm"),
                (b"apns-priority", b"10"), (b"apns-expiration", expiration)]
        cap = self.cap
        sent = 0
        while pending and len(streams) < cap:
            push = pending.popleft()
            if push.done:
                continue
            stream_id = next_id()
            send_headers(stream_id, [*head, (b":path", push.path), *tail])
            body = push.body
            room = window(stream_id)
            if room >= len(body):
                send_data(stream_id, body, end_stream=True)
            else:
                if room > 0:
                    send_data(stream_id, body[:room])
                self.blocked[stream_id] = body[max(room, 0):]
            push.sent_at = now
            streams[stream_id] = push
            sent += 1
        client.stats["sent"] += sent

    def _send_blocked(self) -> None:
        for stream_id, rest in list(self.blocked.items()):
            if stream_id not in self.streams:
                del self.blocked[stream_id]
                continue
            room = self.h2.local_flow_control_window(stream_id)
            if room <= 0:
                continue
            if room >= len(rest):
                self.h2.send_data(stream_id, rest, end_stream=True)
                del self.blocked[stream_id]
            else:
                self.h2.send_data(stream_id, rest[:room])
                self.blocked[stream_id] = rest[room:]

    # ----- reader ----------------------------------------------------------------------------
    async def _reader(self) -> None:
        h2conn = self.h2
        receive_some = self.stream.receive_some
        responses = self.responses
        ResponseReceived = h2.events.ResponseReceived
        DataReceived = h2.events.DataReceived
        StreamEnded = h2.events.StreamEnded
        while True:
            data = await receive_some(65536)
            if not data:
                raise _Lost("closed by server")
            self.last_received = trio.current_time()
            self.ping_deadline = None
            for event in h2conn.receive_data(data):
                kind = type(event)
                if kind is ResponseReceived:
                    status, apns_id = 0, None
                    for name, value in event.headers:
                        if name == b":status":
                            status = int(value)
                        elif name == b"apns-id":
                            apns_id = value.decode("ascii", "replace")
                    responses[event.stream_id] = [status, apns_id, b""]
                elif kind is DataReceived:
                    entry = responses.get(event.stream_id)
                    if entry is not None and len(entry[2]) < 4096:
                        entry[2] += event.data
                    # give the window back, or the server stalls after 64 KiB of error bodies
                    h2conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif kind is StreamEnded:
                    self._finish_stream(event.stream_id)
                else:
                    self._other_event(event)
            self.wake.set()

    def _finish_stream(self, stream_id: int) -> None:
        self.h2.purge_closed_streams()
        push = self.streams.pop(stream_id, None)
        entry = self.responses.pop(stream_id, None)
        self.blocked.pop(stream_id, None)
        if push is None or push.done:
            return
        self.answered += 1
        if entry is None:
            self.client._retry(push, PushResult(PushStatus.FAILED, reason="NoResponseHeaders"))
        else:
            self.client._complete(push, entry[0], entry[1], entry[2])

    def _other_event(self, event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self._update_cap()  # may drop to 1 (APNs does after a rejected push): honor it
        elif isinstance(event, h2.events.StreamReset):
            push = self.streams.pop(event.stream_id, None)
            self.responses.pop(event.stream_id, None)
            self.blocked.pop(event.stream_id, None)
            if push is not None and not push.done:
                if event.error_code == ErrorCodes.REFUSED_STREAM:
                    self.client._requeue_front([push])  # RFC 9113: not processed, safe to resend
                else:
                    self.client._retry(push, PushResult(
                        PushStatus.FAILED, reason=f"StreamReset: {_code_name(event.error_code)}"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event)
        elif isinstance(event, h2.events.PingAckReceived):
            self.ping_deadline = None

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        last = event.last_stream_id or 0
        self.goaway_last_id = last
        self.draining = True
        above = [p for sid, p in sorted(self.streams.items()) if sid > last]
        for sid in [sid for sid in self.streams if sid > last]:
            del self.streams[sid]
            self.responses.pop(sid, None)
            self.blocked.pop(sid, None)
        self.client._requeue_front(above)
        reason = _goaway_reason(event)
        if self.client.log:
            self.client.log.info("apns_goaway", reason=reason, last_stream_id=last,
                                 resend=len(above), still_open=len(self.streams))
        if "Certificate" in reason and self.client.cert_error != reason:
            self.client.cert_error = reason
            if self.client.log:
                self.client.log.error("apns_certificate_rejected", reason=reason)
        self.lost = f"GOAWAY {reason}"
        if not self.streams:
            raise _Lost(self.lost)

    # ----- watchdog: timeouts, PING, drain ------------------------------------------------------
    async def _watchdog(self) -> None:
        client = self.client
        tick = max(0.05, min(1.0, client.timeout / 4, client.ping_interval / 2))
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            expired = [sid for sid, p in self.streams.items() if now - p.sent_at > client.timeout]
            for sid in expired:
                push = self.streams.pop(sid)
                self.responses.pop(sid, None)
                self.blocked.pop(sid, None)
                try:
                    self.h2.reset_stream(sid, ErrorCodes.CANCEL)
                except h2.exceptions.ProtocolError:
                    pass  # already closed from h2's side
                push.finish(PushResult(PushStatus.FAILED, reason="Timeout"))
            if self.ping_deadline is not None and now > self.ping_deadline:
                raise _Lost("PING unanswered")
            if self.ping_deadline is None and now - self.last_received > client.ping_interval:
                self.h2.ping(os.urandom(8))
                self.ping_deadline = now + client.timeout
            if self.draining and self.goaway_last_id is not None and not self.streams:
                raise _Lost(self.lost or "GOAWAY")
            self.wake.set()


class _Retired(Exception):
    pass


def _goaway_reason(event: h2.events.ConnectionTerminated) -> str:
    if event.additional_data:
        try:
            reason = json.loads(event.additional_data).get("reason")
            if reason:
                return str(reason)
        except (ValueError, AttributeError):
            pass
    return _code_name(event.error_code)


def _code_name(code) -> str:
    return getattr(code, "name", str(code))


def _describe(error: BaseException) -> str:
    if isinstance(error, trio.TooSlowError):
        return "timeout"
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:200]
