"""What a push is while it travels (Push, Batch) and what APNs made of it (PushResult)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import trio


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


class Push:
    __slots__ = ("token", "path", "body", "attempts", "batch", "index", "sent_at", "done")

    def __init__(self, token: str, body: bytes, batch: Batch, index: int):
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


class Batch:
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
