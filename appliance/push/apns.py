"""APNs client: one long-lived HTTP/2 connection (h2 over trio.SSLStream), many pushes multiplexed.

Shape: `APNsClient.run()` owns the connection loop (connect on demand, reconnect with jittered
exponential backoff); each live connection has a reader task, a writer task (the only one that
writes the socket, so the frames of many streams leave in one TLS write) and a watchdog
(per-push timeout, PING when idle, drain after GOAWAY or a certificate swap). Pushes wait in
one queue; the writer opens streams while fewer than min(own cap, server's current
SETTINGS_MAX_CONCURRENT_STREAMS) are in flight.
"""

from __future__ import annotations

import json
import os
import random
import ssl
import tempfile
from collections import deque
from collections.abc import Iterable
from urllib.parse import urlsplit

import h2.exceptions
import trio

from appliance.push.connection import Connection, Lost, describe_error
from appliance.push.health import PROVEN_AFTER, PushHealth
from appliance.push.pushcert import PushCertificate
from appliance.push.results import Batch, Push, PushResult, PushStatus

__all__ = ["APNsClient", "PushResult", "PushStatus", "push_body"]

DEFAULT_URL = "https://api.push.apple.com"
# How a failed connection attempt is described in health, by how far it got.
_PHASES = {"tcp": "APNs unreachable", "tls": "TLS with APNs refused", "h2": "APNs HTTP/2 refused"}
DEFAULT_EXPIRATION = 3 * 86400  # seconds; a device offline for a weekend still gets the push


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
        probe_interval: float = 30.0,
        health: PushHealth | None = None,
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
        self.probe_interval = probe_interval
        self.health = health or PushHealth()
        self._phase = "tcp"  # how far the current connection attempt got (for health's cause)
        self.log = log
        self._pending: deque[Push] = deque()
        self._delayed: set[Push] = set()  # waiting out a retry backoff
        self._demand = trio.Event()
        self._conn: Connection | None = None
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
        batch = Batch(len(items))
        if not items:
            return []
        now = trio.current_time()
        queued = 0
        # APNs refuses an expired certificate anyway: say so per push instead of failing handshakes
        no_push = "NoPushCertificate" if self._certificate is None else (
            "PushCertificateExpired" if self._certificate.expired() else None)
        for index, (token, magic) in enumerate(items):
            hex_token = _token_hex(token)
            if hex_token is None:
                batch.finish(index, PushResult(PushStatus.REJECTED, reason="InvalidTokenFormat"))
                continue
            if no_push:
                batch.finish(index, PushResult(PushStatus.FAILED, reason=no_push))
                continue
            throttled = self._throttled.get(hex_token)
            if throttled and throttled[0] > now:
                batch.finish(
                    index,
                    PushResult(PushStatus.THROTTLED, 429, reason="TooManyRequests",
                               retry_after=throttled[0] - now),
                )
                continue
            self._pending.append(Push(hex_token, push_body(magic), batch, index))
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
    def _complete(self, push: Push, status: int, apns_id: str | None, body: bytes) -> None:
        if status == 200:
            self.health.answered()
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
        # 400/410/429 are about one device: APNs took our certificate and serves; 403 and 5xx are not
        self.health.answered(f"{status} {reason or 'no reason'}" if status == 403 or status >= 500 else None)
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

    def _retry(self, push: Push, failure: PushResult) -> None:
        """Try again later (bounded); the caller's push fails with `failure` when attempts run out."""
        if not failure.http_status:  # a timeout or a reset: no answer (answers were counted above)
            self.health.push_failed(failure.describe())
        push.attempts += 1
        if push.attempts >= self.max_attempts or self._nursery is None:
            push.finish(failure)
            return
        self.stats["retries"] += 1
        delay = self._backoff(push.attempts, cap=self.backoff_max)
        self._delayed.add(push)
        self._nursery.start_soon(self._requeue_later, push, delay)

    async def _requeue_later(self, push: Push, delay: float) -> None:
        await trio.sleep(delay)
        self._delayed.discard(push)
        if not push.done:
            self._pending.appendleft(push)
            self._kick()

    def _requeue_front(self, pushes: list[Push]) -> None:
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
            probe = not self._pending and self.health.connection_failing
            self._reconnect = False
            if self._certificate is None:
                self._fail_all("NoPushCertificate")
                continue
            generation = self._generation
            try:
                conn = await self._connect()
            except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.TooSlowError, Lost,
                    h2.exceptions.ProtocolError) as e:
                failures += 1
                reason = describe_error(e)
                self.last_connection_error = reason
                self.health.connection_failed(f"{_PHASES[self._phase]}: {reason}")
                self.stats["connect_failures"] += 1
                delay = self._backoff(failures)
                if self.log:
                    # a probe (nothing waiting) that fails again is no news: health says it already
                    (self.log.debug if probe else self.log.warning)(
                        "apns_connect_failed", error=reason, failures=failures, retry_in=round(delay, 2))
                self._charge_pending(f"ConnectionFailed: {reason}")
                await self._retry_after(delay)
                continue
            self.stats["connects"] += 1
            self.connected = True
            self.health.connection_up()
            started = trio.current_time()
            if generation != self._generation:
                conn.retire()
            self._conn = conn
            try:
                reason = await conn.serve()
            finally:
                self._conn = None
                self.connected = False
            healthy = reason is None or conn.answered > 0 or trio.current_time() - started > PROVEN_AFTER
            self.health.connection_down(reason, proven=healthy)
            failures = 0 if healthy else failures + 1
            if reason and self.log:
                self.log.info("apns_connection_closed", reason=reason, answered=conn.answered)
            if reason:
                self.last_connection_error = reason
            if failures:
                await self._retry_after(self._backoff(failures))
            elif self._pending:
                self._demand.set()

    async def _retry_after(self, delay: float) -> None:
        """Back off, then connect again for the pushes waiting. With none waiting while the connection
        is failing, still try now and then (probe_interval), so health sees APNs come back."""
        await trio.sleep(delay)
        if not self._pending and self._may_probe():
            with trio.move_on_after(max(0.0, self.probe_interval - delay)):
                await self._demand.wait()
            self._reconnect = self._may_probe()
        self._demand.set()

    def _may_probe(self) -> bool:
        cert = self._certificate
        return cert is not None and not cert.expired() and self.health.connection_failing

    async def _connect(self) -> Connection:
        self._phase = "tcp"
        with trio.fail_after(self.timeout):
            tcp = await trio.open_tcp_stream(self.host, self.port)
            self._phase = "tls"
            stream = trio.SSLStream(tcp, self._ssl_context, server_hostname=self.host,
                                    https_compatible=True)
            try:
                await stream.do_handshake()
                self._phase = "h2"
                if stream.selected_alpn_protocol() != "h2":
                    raise Lost("server did not negotiate ALPN h2")
                conn = Connection(self, stream)
                await conn.start()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        return conn


