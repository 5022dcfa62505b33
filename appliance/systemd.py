"""sd_notify spoken by the process itself: READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

No dependency: a datagram to $NOTIFY_SOCKET (a path, or an abstract address written with a leading '@').
The watchdog ping is sent from the event loop itself, so a blocked loop stops the pings and systemd
restarts the process.
"""

from __future__ import annotations

import os
import socket

import trio

from appliance.logs import get_logger

log = get_logger("systemd")


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._socket: trio.socket.SocketType | None = None
        self._address = None
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._socket = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    async def notify(self, *fields: str) -> None:
        if self._socket is None:
            return
        try:
            await self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            # systemd being away must not take the appliance down; say so once per failure.
            log.warning("sd_notify_failed", error=exc)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC, if the watchdog is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1_000_000 / 2
    except ValueError:
        return None


async def run_watchdog(notifier: Notifier, interval: float, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    while True:
        await notifier.notify("WATCHDOG=1")
        await trio.sleep(interval)
