"""hypercorn 0.18 and requests answered before their body was read (a 404, 401, 405 or 413).

Clients may keep sending a body after its answer; hypercorn mishandled that in three ways:
- HTTP/2 forgets a stream once answered and raised KeyError on its next DATA frame, which ended the
  process (upstream issue #329). EarlyAnswerH2 acknowledges such data, so the connection's flow-control
  window keeps moving, and asks the client to stop: RST_STREAM NO_ERROR after a complete response
  (RFC 9113 §8.1).
- HTTP/1.1 closed the connection with the body still arriving; the kernel then resets it, and a client
  that sends its whole body before reading (most scripts) never sees the answer. EarlyAnswerH11 reads
  the rest and drops it, within hypercorn's keep-alive timeout, then serves the next request (or closes,
  if the answer said so).
- Both hand body data to the app through a bounded channel nobody reads once the app has returned:
  enough of it blocked the connection's reader, and with it every request on that connection, for
  good. AppTaskGroup closes the channel when the app returns, so later data is dropped at once.

Installed by appliance.web.tls_peer.install_hook, which pins hypercorn 0.18.x; these lean on its
internals (H2Protocol._handle_events/streams/stream_buffers, H11Protocol._handle_events/_maybe_recycle/
_close_stream/_send_error_response, trio TaskGroup.spawn_app and task_group._handle).
"""

from __future__ import annotations

import h2.errors
import h2.events
import h2.exceptions
import h11
import trio
from hypercorn.events import Closed, Updated
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.task_group import TaskGroup, _handle


class EarlyAnswerH2(H2Protocol):
    """hypercorn's HTTP/2, for DATA that arrives on a stream it has already answered and forgotten."""

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self._drop_late_data(event)
            else:
                # One at a time: an earlier event (or the app meanwhile) may finish a stream.
                await super()._handle_events([event])
        await self._flush()

    def _drop_late_data(self, event: h2.events.DataReceived) -> None:
        self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        # hypercorn drops a stream's send buffer once its END_STREAM is out: only then is the response
        # complete, and a reset no longer cuts it short.
        if event.stream_ended is None and event.stream_id not in self.stream_buffers:
            try:
                self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
            except h2.exceptions.StreamClosedError:
                pass  # already reset (a request refused while shutting down)


class EarlyAnswerH11(H11Protocol):
    """hypercorn's HTTP/1.1, reading to its end a request body that was answered early."""

    _discarding = False

    def _body_still_arriving(self) -> bool:
        return (self.connection.our_state in (h11.DONE, h11.MUST_CLOSE)
                and self.connection.their_state is h11.SEND_BODY and not self.context.terminated.is_set())

    async def _maybe_recycle(self) -> None:
        if self._body_still_arriving():
            await self._close_stream()
            if self._body_still_arriving():
                self._discarding = True
                await self.can_read.set()
                await self.send(Updated(idle=True))  # the keep-alive timeout bounds the rest of the body
                return
        await super()._maybe_recycle()

    async def _handle_events(self) -> None:
        if self._discarding and not await self._discard_body():
            return
        await super()._handle_events()

    async def _discard_body(self) -> bool:
        """Drop what has arrived of the answered body; True once the next request may be read."""
        while self.connection.their_state is h11.SEND_BODY:
            try:
                event = self.connection.next_event()
            except h11.RemoteProtocolError:  # malformed chunked encoding, a body cut short
                self._discarding = False
                await self.send(Closed())
                return False
            if event is h11.NEED_DATA:
                return False
        self._discarding = False
        await super()._maybe_recycle()  # the next request, or close if the answer said so
        return self.connection.our_state is h11.IDLE

    async def _send_error_response(self, status_code: int) -> None:
        # Only for requests h11 refused, so client input: never a 5xx (h11 hints 501 for a
        # Transfer-Encoding other than chunked).
        await super()._send_error_response(status_code if status_code < 500 else 400)


class AppTaskGroup(TaskGroup):
    """hypercorn's per-connection task group; each request's channel to the app closes when the app returns."""

    async def spawn_app(self, app, config, scope, send):
        to_app, from_client = trio.open_memory_channel(config.max_app_queue_size)

        async def app_send(message) -> None:
            if message is None:  # the app has returned (hypercorn's _handle says so before cleaning up)
                from_client.close()
            await send(message)

        async def put(message) -> None:
            try:
                await to_app.send(message)
            except trio.BrokenResourceError:
                pass  # the app has returned: nobody will read it

        self._nursery.start_soon(_handle, app, config, scope, from_client.receive, app_send,
                                 trio.to_thread.run_sync, trio.from_thread.run)
        return put
