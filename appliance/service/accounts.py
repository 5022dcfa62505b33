"""Console accounts: roles, Argon2id password hashes, and the sign-in check with its guessing limits.

Roles are ordered: a viewer reads; an operator also sends and cancels commands; an admin also manages the
push certificate, enrollment and users. Passwords are hashed with Argon2id (argon2-cffi's defaults: 64 MiB,
3 passes, 4 lanes, ~0.1 s here), verified on a worker thread so the event loop never waits on it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from appliance.identity.guesses import GuessLimit

ROLES = ("viewer", "operator", "admin")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # Argon2 takes any length; a megabyte "password" is only a way to burn CPU
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

# Wrong passwords allowed per client address and per account within the window; then sign-ins from that
# address (or to that account) are refused, even with the right password, until the window has passed.
ADDRESS_LIMIT, ACCOUNT_LIMIT, GUESS_WINDOW = 10, 20, 900.0

_hasher = PasswordHasher()
# Unknown names are checked against this, so they cost as much as known ones (no timing tell).
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class AccountError(ValueError):
    """A name, role or password that cannot be used; the message says why in one line."""


def allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise AccountError("a user name is 1-64 letters, digits or . _ @ -, starting with a letter or digit")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"a password has at most {MAX_PASSWORD} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the user exists; False for any malformed input."""
    if len(password) > MAX_PASSWORD:
        return False
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


class SignInLimits:
    """Two GuessLimits: per client address and per account name (kept in memory; a restart forgets), and
    at most two 64 MiB verifications at once, however many sign-ins arrive."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.by_address = GuessLimit(ADDRESS_LIMIT, GUESS_WINDOW, clock)
        self.by_account = GuessLimit(ACCOUNT_LIMIT, GUESS_WINDOW, clock)
        self._slots: trio.CapacityLimiter | None = None

    async def verify(self, password_hash: str | None, password: str) -> bool:
        if self._slots is None:
            self._slots = trio.CapacityLimiter(2)
        return await trio.to_thread.run_sync(verify_password, password_hash, password, limiter=self._slots)

    def blocked(self, address: str | None, name: str) -> bool:
        return self.by_address.blocked(address) or self.by_account.blocked(name.lower())

    def wrong(self, address: str | None, name: str) -> bool:
        """Count one failed sign-in; True when it reached a limit (worth a log line)."""
        hit_address = self.by_address.wrong_guess(address)
        hit_account = self.by_account.wrong_guess(name.lower())
        return hit_address or hit_account
