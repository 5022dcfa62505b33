"""Console sessions as signed cookies, and the CSRF token tied to them. Sans-I/O: strings in, strings out,
the clock injected.

The cookie holds a random session id, the user name, a fingerprint of the password hash it was opened
with (a new password ends every session made with the old one), when the person signed in and when the
session was last used. It is re-signed on every request, so `seen` slides: a session idle for
IDLE_SECONDS, or older than MAX_SECONDS, is over. The CSRF token is an HMAC of the session id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from itsdangerous import BadSignature, URLSafeSerializer

COOKIE = "__Host-mdm-console"  # __Host-: Secure, Path=/, no Domain; the browser enforces all three
IDLE_SECONDS = 30 * 60
MAX_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    sid: str
    seen: float
    user: str | None = None
    fingerprint: str | None = None  # of the password hash the user signed in with
    signed_in: float | None = None


def password_fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:32]


class SessionCodec:
    def __init__(self, key: str, clock: Callable[[], float] = time.time) -> None:
        self._serializer = URLSafeSerializer(key, salt="mdm-console-session")
        self._csrf_key = hashlib.sha256(b"mdm-console-csrf\0" + key.encode()).digest()
        self.clock = clock

    def new(self) -> Session:
        return Session(sid=secrets.token_urlsafe(18), seen=self.clock())

    def signed_in(self, user: str, password_hash: str) -> Session:
        """A fresh session id at sign-in, so an id planted before it is worth nothing after."""
        now = self.clock()
        return Session(sid=secrets.token_urlsafe(18), seen=now, user=user,
                       fingerprint=password_fingerprint(password_hash), signed_in=now)

    def touched(self, session: Session) -> Session:
        return replace(session, seen=self.clock())

    def dumps(self, session: Session) -> str:
        return self._serializer.dumps([session.sid, session.seen, session.user, session.fingerprint,
                                       session.signed_in])

    def loads(self, text: str | None) -> Session | None:
        """The session, or None when the cookie is missing, forged, malformed, idle too long or too old."""
        if not text or len(text) > 1000:
            return None
        try:
            sid, seen, user, fingerprint, signed_in = self._serializer.loads(text)
        except (BadSignature, ValueError, TypeError):
            return None
        if not isinstance(sid, str) or not isinstance(seen, (int, float)):
            return None
        now = self.clock()
        if now - seen > IDLE_SECONDS or seen - now > 60:
            return None
        if user is not None and (not isinstance(signed_in, (int, float)) or now - signed_in > MAX_SECONDS):
            return None
        return Session(sid, seen, user, fingerprint, signed_in)

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._csrf_key, session.sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session).encode(), token.encode())
