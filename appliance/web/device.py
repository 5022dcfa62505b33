"""The two URLs a device talks to: CheckInURL (/mdm/checkin) and ServerURL (/mdm/connect).

Both route by Content-Type, so a profile without a CheckInURL (check-ins go to ServerURL) works too:
`application/x-apple-aspen-mdm-checkin` is a check-in, anything else a command report.
Order per request: body (413 over [server] max_body_size, without keeping the rest in memory),
who is speaking (400 malformed, 403 untrusted), what was said (400 naming the key), then one
transaction; 200 only after it committed, 503 with Retry-After when the database cannot take it (disk
full, I/O error, locked: nothing stored). Never 401: a device answered 401 drops its enrollment.

Served as plain ASGI in front of quart (create_app installs DeviceEndpoints as app.asgi_app): this is
the appliance's hot path, and quart's request context, routing, hooks and response objects cost about
a fifth of a device request's CPU (docs/PERFORMANCE.md). All else is shared with the rest of the app:
the service layer, the identity check, the plain-text error format, the request log line and metrics.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

import trio

from appliance.identity.errors import IdentityError
from appliance.logs import get_logger
from appliance.protocol import answers
from appliance.protocol.answers import Answer
from appliance.protocol.errors import MessageError
from appliance.protocol.messages import decode_checkin, decode_report
from appliance.protocol.profile import CHECKIN_PATH, SERVER_PATH
from appliance.service import mdm
from appliance.service.certauth import CertificateNotBound, Presented
from appliance.store.faults import StoreUnavailable
from appliance.web.app import record_request
from appliance.web.errors import unavailable_reason
from appliance.web.identify import device_certificate

log = get_logger("device")

CHECKIN_CONTENT_TYPE = "application/x-apple-aspen-mdm-checkin"
PATHS = frozenset({CHECKIN_PATH, SERVER_PATH})
BODY_TIMEOUT = 60  # seconds to receive a whole body, as quart's BODY_TIMEOUT for the other URLs


class _Reply:
    """What is sent back, and what the request log line says about it."""

    __slots__ = ("status", "body", "content_type", "close", "retry_after", "enrollment_id", "command_uuid")

    def __init__(self, status: int, body: bytes = b"", content_type: str | None = None, *, close: bool = False):
        self.status, self.body, self.content_type, self.close = status, body, content_type, close
        self.retry_after: int | None = None
        self.enrollment_id: str | None = None
        self.command_uuid: str | None = None


class DeviceEndpoints:
    """ASGI app: the device URLs here, every other request to `app` (the quart app's own ASGI callable)."""

    def __init__(self, app, rt) -> None:
        self.app = app
        self.rt = rt

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in PATHS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            reply = await self._serve(scope, receive)
        except _Disconnected:
            return
        except Exception as exc:  # never expected: every input has a 4xx path; as quart's handler
            log.exception("request_failed", method=scope["method"], path=scope["path"], error=repr(exc))
            reply = _Reply(500, b"internal error\n", "text/plain; charset=utf-8")
        headers = [(b"content-length", str(len(reply.body)).encode())]
        if reply.content_type is not None:
            # An empty answer is zero bytes with no type: Apple's "empty response body".
            headers.append((b"content-type", reply.content_type.encode()))
        if reply.status == 405:
            headers.append((b"allow", b"PUT"))
        if reply.close:
            headers.append((b"connection", b"close"))
        if reply.retry_after is not None:
            headers.append((b"retry-after", str(reply.retry_after).encode()))
        client = scope.get("client")
        # Before sending, as quart's after_request: the line is written when the device has its answer.
        record_request(self.rt, rule=scope["path"], method=scope["method"], path=scope["path"],
                       status=reply.status, started=started, remote=client[0] if client else None,
                       enrollment_id=reply.enrollment_id, command_uuid=reply.command_uuid)
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _serve(self, scope, receive) -> _Reply:
        rt = self.rt
        if scope["method"] != "PUT":
            return _text(405, "devices PUT to this URL")
        # Header names arrive lower-cased (ASGI); the few we read, first occurrence wins.
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        limit = rt.config.server.max_body_size
        body = None
        with trio.move_on_after(BODY_TIMEOUT) as reading:
            body = await _read_body(receive, headers.get("content-length"), limit)
        if reading.cancelled_caught:
            return self._refuse(scope, 408, "the body did not arrive in time", close=True)
        if body is None:
            return self._refuse(scope, 413, f"body is over the limit of {limit} bytes", close=True)
        return await self._handle(scope, headers, body)

    async def _handle(self, scope, headers: dict[str, str], body: bytes) -> _Reply:
        rt = self.rt
        try:
            certificate = device_certificate(rt, scope, headers, body)  # logs its refusals in full
        except IdentityError as exc:
            return self._refuse(scope, exc.status, exc.reason)
        mimetype = headers.get("content-type", "").partition(";")[0].strip().lower()
        is_checkin = mimetype == CHECKIN_CONTENT_TYPE
        try:
            message = decode_checkin(body) if is_checkin else decode_report(body)
        except MessageError as exc:
            return self._refuse(scope, exc.status, exc.reason, checkin=is_checkin)
        params = _url_params(scope.get("query_string", b""))
        try:
            if is_checkin:
                answer = await mdm.checkin(rt, message, Presented.of(certificate), params)
            else:
                answer = await mdm.report(rt, message, Presented.of(certificate), params)
        except CertificateNotBound as exc:
            log.warning("device_certificate_not_bound", enrollment_id=message.enrollment.id, detail=exc.detail)
            reply = self._refuse(scope, exc.status, exc.reason)
        except MessageError as exc:
            reply = self._refuse(scope, exc.status, exc.reason, checkin=is_checkin)
        except StoreUnavailable as exc:
            # Disk full, I/O error, a lock held elsewhere: nothing was stored, and the device sends the same
            # message again later (a report answered 503 is not lost).
            reply = self._refuse(scope, 503, unavailable_reason(exc), checkin=is_checkin)
            reply.retry_after = exc.retry_after
        else:
            reply = _answer(answer)
        reply.enrollment_id = message.enrollment.id
        # For the log line: the command reported on, else the command sent with the answer.
        reply.command_uuid = (None if is_checkin else message.command_uuid) or reply.command_uuid
        return reply

    def _refuse(self, scope, status: int, reason: str, *, checkin: bool | None = None,
                close: bool = False) -> _Reply:
        self.rt.metrics.mdm_refused.labels(str(status)).inc()
        if status < 403 or status >= 408:  # identity refusals are logged where they are decided
            log.info("device_request_refused", status=status, reason=reason, checkin=checkin, path=scope["path"])
        reply = _text(status, reason)
        # The rest of an oversized or stalled body is not kept: the connection closes once it has arrived
        # (HTTP/1.1; read and dropped so the device sees this answer) or the device is told to stop
        # sending it (HTTP/2); appliance.web.early_answer.
        reply.close = close
        return reply


class _Disconnected(Exception):
    """The client went away before its request was complete: nothing to answer."""


async def _read_body(receive, declared: str | None, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is known to be over `limit` (the rest is not read)."""
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _url_params(query: bytes) -> dict | None:
    """The URL's query parameters (webhook events carry them, as NanoMDM's do); first value per name."""
    if not query:
        return None
    params: dict[str, str] = {}
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        params.setdefault(name, value)
    return params or None


def _answer(answer: Answer) -> _Reply:
    reply = _Reply(answer.status, answer.body, answer.content_type)
    reply.command_uuid = answer.command_uuid
    return reply


def _text(status: int, reason: str) -> _Reply:
    return _answer(answers.refusal(status, reason))  # the one plain-text refusal format
