"""Challenge guessing: a client address that sent too many wrong SCEP challenges is refused for a while.

A static `[enrollment] scep_challenge` is only as strong as the operator made it, and every PKCSReq
tries one guess for the price of one RSA signature. After `limit` wrong challenges from one address
within `window` seconds, challenge checks from that address fail until the window has passed, even
with the right challenge: otherwise the answer would tell a guesser when it hit. Kept in memory
(a restart forgets), bounded in size; sans-I/O, the clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MAX_ADDRESSES = 10_000  # beyond this the oldest windows are dropped: memory stays bounded


class GuessLimit:
    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit  # 0: no limit
        self.window = window
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # address -> (window start, wrong guesses)

    def blocked(self, address: str | None) -> bool:
        if not self.limit or not address:
            return False
        entry = self._windows.get(address)
        return entry is not None and self._current(entry) and entry[1] >= self.limit

    def wrong_guess(self, address: str | None) -> bool:
        """Count one wrong challenge; True when this one reached the limit (worth a log line)."""
        if not self.limit or not address:
            return False
        entry = self._windows.pop(address, None)
        count = entry[1] + 1 if entry is not None and self._current(entry) else 1
        self._windows[address] = (entry[0] if count > 1 else self._clock(), count)
        self._bound()
        return count == self.limit

    def _current(self, entry: tuple[float, int]) -> bool:
        return self._clock() - entry[0] < self.window

    def _bound(self) -> None:
        if len(self._windows) <= MAX_ADDRESSES:
            return
        self._windows = {a: e for a, e in self._windows.items() if self._current(e)}
        while len(self._windows) > MAX_ADDRESSES:  # insertion order: the least recently failed first
            del self._windows[next(iter(self._windows))]
