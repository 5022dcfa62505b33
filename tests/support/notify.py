"""A socket playing systemd's side of sd_notify: READY=1, STATUS=, WATCHDOG=1 as the process sends them."""

from __future__ import annotations

import socket
import time
from pathlib import Path


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_until(self, matches, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if matches(message):
                    return message
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                pass
        raise AssertionError(f"no {what} within {timeout}s; got {self.messages}")

    def wait_for(self, field: str, timeout: float) -> str:
        """The first message carrying exactly this field, e.g. "READY=1"."""
        return self.wait_until(lambda message: field in message.split("\n"), timeout, repr(field))

    def wait_for_status(self, text: str, timeout: float) -> str:
        """The first STATUS= line containing `text`."""
        return self.wait_until(lambda message: any(
            line.startswith("STATUS=") and text in line for line in message.split("\n")), timeout,
            f"STATUS= with {text!r}")

    def close(self) -> None:
        self.sock.close()
