"""Guessing limits: a client that sent too many wrong secrets is refused for a while.

Every guessable secret has one: the SCEP challenge, the enrollment-profile secret and the admin API
key (`[enrollment] challenge_guess_*`, `[enrollment] secret_guess_*`, `[api] key_guess_*`). After
`limit` wrong secrets from one client within `window` seconds of its first, that client is refused
until the window has passed, even with the right secret: otherwise the answer would tell a guesser
when it hit. The window is fixed, so a guesser sharing the operator's address can shut the operator
out for at most one window at a time, never for good. Kept in memory (a restart forgets), bounded in
size; sans-I/O, the clock is injectable for tests.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Iterable

from appliance.identity.peer import is_trusted_proxy

MAX_ADDRESSES = 10_000  # beyond this the oldest windows are dropped: memory stays bounded


class GuessLimit:
    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit  # 0: no limit
        self.window = window
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # client -> (window start, wrong guesses)

    def blocked(self, address: str | None) -> bool:
        if not self.limit or not address:
            return False
        entry = self._windows.get(address)
        return entry is not None and self._current(entry) and entry[1] >= self.limit

    def retry_after(self, address: str | None) -> int:
        """Whole seconds until a blocked client's window has passed (0 when it is not blocked)."""
        if not self.blocked(address):
            return 0
        start, _ = self._windows[address]  # type: ignore[index]
        return max(1, math.ceil(start + self.window - self.clock()))

    def wrong_guess(self, address: str | None) -> bool:
        """Count one wrong secret; True when this one reached the limit (worth a log line)."""
        if not self.limit or not address or self.blocked(address):
            return False  # a blocked client's guesses are not even checked
        entry = self._windows.pop(address, None)
        count = entry[1] + 1 if entry is not None and self._current(entry) else 1
        self._windows[address] = (entry[0] if count > 1 else self.clock(), count)
        self._bound()
        return count == self.limit

    def _current(self, entry: tuple[float, int]) -> bool:
        return self.clock() - entry[0] < self.window

    def _bound(self) -> None:
        if len(self._windows) <= MAX_ADDRESSES:
            return
        self._windows = {a: e for a, e in self._windows.items() if self._current(e)}
        while len(self._windows) > MAX_ADDRESSES:  # insertion order: the least recently failed first
            del self._windows[next(iter(self._windows))]


def guessing_client(peer: str | None, forwarded_for: Iterable[str], trusted_proxies: Iterable[str]) -> str | None:
    """The client a guessing limit counts for a request from TCP `peer` with these X-Forwarded-For
    header values. Behind `[identity] trusted_proxies` it is the nearest address a trusted proxy
    wrote: X-Forwarded-For read from the right, skipping the trusted proxies themselves (what the
    client wrote further left proves nothing). IPv6 clients count per /64, the block one subscriber
    usually has, so that a guesser cannot take a fresh address per guess."""
    trusted = tuple(trusted_proxies)
    client = peer
    if is_trusted_proxy(peer, trusted):
        hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            if _address(hop) is None:
                break  # not an address: whoever wrote it is not to be believed, count the proxy
            client = hop
            if not is_trusted_proxy(hop, trusted):
                break
    return _counted_as(client)


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # dual-stack listeners report IPv4 peers as ::ffff:a.b.c.d
    return ip


def _counted_as(text: str | None) -> str | None:
    ip = _address(text)
    if ip is None:
        return text  # not an IP (a Unix socket): counted as it is
    if isinstance(ip, ipaddress.IPv6Address) and not ip.is_loopback:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
