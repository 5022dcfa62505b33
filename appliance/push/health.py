"""Whether pushes reach APNs, and since when they have not: the truth behind /healthz, STATUS= and
/metrics when APNs is unreachable, refuses our TLS identity or answers 403.

Two kinds of failure, each ended only by its own proof, so a flapping link never restarts the clock:
- the connection (APNs unreachable, TLS refused, a connection dying before it proved itself) ends when
  a connection proves itself: APNs answers a push on it, or it stays up PROVEN_AFTER seconds;
- the pushes (403, 5xx, timeouts, resets) end when APNs answers a push with a per-device answer
  (200, 400, 410, 429): the certificate is accepted and APNs is serving.
Time comes from an injected clock, so tests need no sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable

PROVEN_AFTER = 10.0  # seconds a connection must live to count as working without any answer


class PushHealth:
    def __init__(self, unhealthy_after: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.unhealthy_after = unhealthy_after
        self.clock = clock
        self._connection_failing: float | None = None
        self._pushes_failing: float | None = None
        self._up_since: float | None = None
        self.cause: str | None = None  # the latest failure while failing

    # ----- what the APNs client reports ----------------------------------------------------------
    def connection_failed(self, cause: str) -> None:
        self._settle()
        self._up_since = None
        if self._connection_failing is None:
            self._connection_failing = self.clock()
        self.cause = cause

    def connection_up(self) -> None:
        self._settle()
        self._up_since = self.clock()

    def connection_down(self, cause: str | None, proven: bool) -> None:
        self._settle()
        self._up_since = None
        if not proven:
            self.connection_failed(cause or "closed before it answered anything")

    def answered(self, failure: str | None = None) -> None:
        """APNs answered a push: the connection works; `failure` (403, 5xx) says the push did not."""
        self._connection_failing = None
        if failure is None:
            self._pushes_failing = None
        else:
            self.push_failed(failure)
        self._forget_cause()

    def push_failed(self, cause: str) -> None:
        self._settle()
        if self._pushes_failing is None:
            self._pushes_failing = self.clock()
        self.cause = cause

    # ----- what health, STATUS= and metrics read ---------------------------------------------------
    @property
    def failing_since(self) -> float | None:
        """Clock time of the first failure not yet ended by its proof, or None."""
        self._settle()
        started = [t for t in (self._connection_failing, self._pushes_failing) if t is not None]
        return min(started) if started else None

    def failing_for(self) -> float:
        since = self.failing_since
        return 0.0 if since is None else max(0.0, self.clock() - since)

    def unhealthy(self) -> bool:
        return self.failing_since is not None and self.failing_for() >= self.unhealthy_after

    @property
    def connection_failing(self) -> bool:
        self._settle()
        return self._connection_failing is not None

    def _settle(self) -> None:
        """A connection that has stayed up long enough has proved itself (checked when asked)."""
        if self._up_since is not None and self.clock() - self._up_since >= PROVEN_AFTER:
            self._connection_failing = None
            self._forget_cause()

    def _forget_cause(self) -> None:
        if self._connection_failing is None and self._pushes_failing is None:
            self.cause = None
