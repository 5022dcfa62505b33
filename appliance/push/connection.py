"""One live HTTP/2 connection to APNs: reader, writer (the only socket writer) and watchdog tasks.

The client (appliance.push.apns) owns the queue and the outcome rules; a connection takes pushes from
that queue while fewer than min(own cap, server's SETTINGS_MAX_CONCURRENT_STREAMS) are in flight and
hands every answer back to the client.
"""

from __future__ import annotations

import json
import os
import ssl
import time

import h2.events
import h2.exceptions
import trio
from h2.errors import ErrorCodes

from appliance import USER_AGENT
from appliance.push.h2wire import CONFIG, APNsH2Connection
from appliance.push.results import Push, PushResult, PushStatus

_USER_AGENT = USER_AGENT.encode()


class Lost(Exception):
    """The connection is gone (message says why)."""


class Connection:
    def __init__(self, client, stream: trio.SSLStream):
        self.client = client
        self.stream = stream
        self.streams: dict[int, Push] = {}
        self.h2 = APNsH2Connection(self.streams, config=CONFIG)
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
                raise Lost("closed before SETTINGS")
            got_settings = False
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    got_settings = True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise Lost(f"GOAWAY before first request: {_goaway_reason(event)}")
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
        except Lost as e:
            if self.lost is None:
                self.lost = str(e)
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError,
                h2.exceptions.ProtocolError) as e:
            if self.lost is None:
                self.lost = describe_error(e)
        self._cancel.cancel()

    def _settle(self) -> None:
        """Hand every unanswered push back: resend what the server never took, fail the rest."""
        client = self.client
        resend = []
        for stream_id, push in sorted(self.streams.items()):
            if push.done:
                continue
            if self.goaway_last_id is not None and stream_id <= self.goaway_last_id:
                # RFC 9113 §6.8: streams up to last_stream_id may have been processed; not resent
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
                (b"apns-priority", b"10"), (b"apns-expiration", expiration), (b"user-agent", _USER_AGENT)]
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
                raise Lost("closed by server")
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
            raise Lost(self.lost)

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
                # like a lost connection: tried again after a backoff, a bounded number of times
                client._retry(push, PushResult(PushStatus.FAILED, reason="Timeout"))
            if self.ping_deadline is not None and now > self.ping_deadline:
                raise Lost("PING unanswered")
            if self.ping_deadline is None and now - self.last_received > client.ping_interval:
                self.h2.ping(os.urandom(8))
                self.ping_deadline = now + client.timeout
            if self.draining and self.goaway_last_id is not None and not self.streams:
                raise Lost(self.lost or "GOAWAY")
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


def describe_error(error: BaseException) -> str:
    if isinstance(error, trio.TooSlowError):
        return "timeout"
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:200]
