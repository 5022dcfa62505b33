"""The appliance's clock: what time it is when expiry, renewal, retention and backoff are decided.

`supervisor.serve` is handed one clock (the system's unless a test gives another) and installs it with
`use` for everything it runs: its trio tasks inherit it (trio copies the context into every task and
`to_thread` call) and the store thread installs the store's. So `now()` here, and `timefmt.now()` built
on it, is the serving appliance's time wherever it is read; outside serve it is the system's. Workers
that wait for a moment to come use the clock's `sleep`, so an advanced test clock wakes them at once.

trio's MockClock cannot stand in: it drives trio's timers only, while the store runs in its own thread
and certificates carry wall-clock dates.
"""

from __future__ import annotations

from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Protocol

import trio


class Clock(Protocol):
    def now(self) -> datetime:
        """The current moment, timezone-aware UTC."""

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


class OffsetClock:
    """The system clock moved by an offset that a test sets or advances: time still passes, and jumps
    when told. `now()` may be read from any thread; `advance`/`set` are called from trio code, and wake
    every `sleep` whose moment they reach."""

    def __init__(self, start: datetime | None = None) -> None:
        self._offset = timedelta(0)
        self._sleepers: set[trio.Event] = set()
        if start is not None:
            self.set(start)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta | float) -> datetime:
        """Jump forward (a timedelta, or seconds); returns the new now."""
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        if delta < timedelta(0):
            raise ValueError("a clock only moves forward")
        self._offset += delta
        self._wake()
        return self.now()

    def set(self, moment: datetime) -> None:
        """Make it `moment` now (set it before serving; afterwards only advance, so time never runs back)."""
        if moment.tzinfo is None:
            raise ValueError("give a timezone-aware moment")
        self._offset = moment - datetime.now(UTC)
        self._wake()

    async def sleep(self, seconds: float) -> None:
        deadline = self.now() + timedelta(seconds=seconds)
        await trio.lowlevel.checkpoint()
        while (left := (deadline - self.now()).total_seconds()) > 0:
            moved = trio.Event()
            self._sleepers.add(moved)
            try:
                with trio.move_on_after(left):
                    await moved.wait()
            finally:
                self._sleepers.discard(moved)

    def _wake(self) -> None:
        for moved in list(self._sleepers):
            moved.set()


SYSTEM = SystemClock()
_CURRENT: ContextVar[Clock] = ContextVar("appliance_clock", default=SYSTEM)


def use(clock: Clock) -> None:
    """Make `clock` the time of the calling task (and the tasks and threads it starts from now on)."""
    _CURRENT.set(clock)


def current() -> Clock:
    return _CURRENT.get()


def now() -> datetime:
    """The current moment by the clock in use (the system's outside a serving appliance)."""
    return _CURRENT.get().now()
