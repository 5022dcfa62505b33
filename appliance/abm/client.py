"""A client for one ABM server's DEP API: OAuth session, JSON calls, errors with their code and Retry-After.

Session (Apple, "Authenticating with the Automated Device Enrollment program"): GET /session signed with
OAuth 1.0a answers an auth_session_token; every other call carries it in X-ADM-Auth-Session. A 401 or a 403
(FORBIDDEN, Apple's word for a session it no longer knows) means: authenticate again, retry the call once. An
answer may carry a new session token in X-ADM-Auth-Session: it replaces ours. 429 and 503 (and 5xx, and
a network failure) raise DepUnavailable with the answer's Retry-After; the caller waits it out. Every call
has a deadline (the whole exchange, connecting included).
"""

from __future__ import annotations

import email.utils
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import httpx
import trio

from appliance import __version__, clock
from appliance.protocol import dep, oauth1

SESSION_PATH = "/session"
CONTENT_TYPE = "application/json;charset=UTF8"


class DepError(Exception):
    """The service answered no (a 4xx): `code` is its error code when it gave one."""

    def __init__(self, status: int, code: str | None, endpoint: str, detail: str = "") -> None:
        self.status, self.code, self.endpoint = status, code, endpoint
        words = f"{endpoint} answered {status}" + (f" {code}" if code else "") + (f": {detail}" if detail else "")
        super().__init__(words)


class DepUnavailable(DepError):
    """Not now: 429, 503 or another 5xx, a timeout or no connection. retry_after: what the answer asked for."""

    def __init__(self, status: int, code: str | None, endpoint: str, detail: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(status, code, endpoint, detail)
        self.retry_after = retry_after


class TokenRefused(DepError):
    """/session refused the server token (expired, revoked, or the terms in ABM not accepted)."""


@dataclass
class Exchange:
    """One HTTP exchange, for metrics: endpoint, status (0: no answer), seconds."""

    endpoint: str
    status: int
    seconds: float


class DepClient:
    def __init__(self, name: str, base_url: str, token: dep.ServerToken, http: httpx.AsyncClient, *,
                 timeout: float, now: Callable[[], datetime],
                 observe: Callable[[Exchange], None] | None = None) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.credentials = oauth1.Credentials(token.consumer_key, token.consumer_secret, token.access_token,
                                              token.access_secret)
        self.http = http
        self.timeout = timeout
        self.now = now
        self.observe = observe
        self.session: str | None = None
        self.sessions_opened = 0

    # --- the calls -------------------------------------------------------------------------------------
    async def account(self) -> dict[str, str]:
        return dep.parse_account(await self.call("GET", "/account"))

    async def fetch_devices(self, cursor: str | None, limit: int) -> dep.DevicePage:
        return dep.parse_device_page(await self.call("POST", "/server/devices", dep.fetch_request(cursor, limit)))

    async def sync_devices(self, cursor: str, limit: int) -> dep.DevicePage:
        return dep.parse_device_page(await self.call("POST", "/devices/sync", dep.fetch_request(cursor, limit)))

    async def define_profile(self, body: dict) -> str:
        return dep.parse_define_answer(await self.call("POST", "/profile", body))

    async def assign_profile(self, profile_uuid: str, serials: list[str]) -> dep.AssignAnswer:
        # POST as Apple documents it today (older clients and the depsim simulator use PUT).
        body = dep.profile_devices_request(profile_uuid, serials)
        return dep.parse_assign_answer(await self.call("POST", "/profile/devices", body))

    async def remove_profile(self, serials: list[str]) -> dep.AssignAnswer:
        body = dep.profile_devices_request(None, serials)
        return dep.parse_assign_answer(await self.call("DELETE", "/profile/devices", body))

    # --- the exchange ----------------------------------------------------------------------------------
    async def call(self, method: str, path: str, body: dict | None = None) -> bytes:
        """The answer's body for a 2xx; DepError / DepUnavailable / TokenRefused otherwise. Opens a session
        first when there is none, and once more when the service says the session is over."""
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            if self.session is None:
                await self._open_session()
            response = await self._send(method, path, data, {"X-ADM-Auth-Session": self.session or ""})
            renewed = response.headers.get("X-ADM-Auth-Session")
            if renewed:
                self.session = renewed
            if response.status_code < 300:
                return response.content
            if attempt == 1 and _session_over(response):
                self.session = None
                continue
            raise _error(response, path)
        raise AssertionError("unreachable")

    async def _open_session(self) -> None:
        url = self.base_url + SESSION_PATH
        header = oauth1.authorization_header("GET", url, self.credentials,
                                             timestamp=int(self.now().timestamp()), nonce=secrets.token_hex(16))
        response = await self._send("GET", SESSION_PATH, None, {"Authorization": header})
        if response.status_code in (401, 403):
            code = dep.error_code(response.content)
            raise TokenRefused(response.status_code, code, SESSION_PATH, _refusal_hint(code))
        if response.status_code >= 300:
            raise _error(response, SESSION_PATH)
        try:
            token = json.loads(response.content)["auth_session_token"]
        except (ValueError, KeyError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise DepError(response.status_code, None, SESSION_PATH, "no auth_session_token in the answer")
        self.session = token
        self.sessions_opened += 1

    async def _send(self, method: str, path: str, data: bytes | None, headers: dict) -> httpx.Response:
        headers = {**headers, "X-Server-Protocol-Version": dep.PROTOCOL_VERSION,
                   "User-Agent": f"mdm-appliance/{__version__}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = CONTENT_TYPE
        started = trio.current_time()
        status = 0
        try:
            with trio.fail_after(self.timeout):
                response = await self.http.request(method, self.base_url + path, content=data, headers=headers,
                                                   timeout=self.timeout)
            status = response.status_code
            return response
        except trio.TooSlowError:
            raise DepUnavailable(0, None, path, f"no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise DepUnavailable(0, None, path, f"{type(exc).__name__}: {exc}"[:200]) from None
        finally:
            if self.observe is not None:
                self.observe(Exchange(path, status, trio.current_time() - started))


def _session_over(response: httpx.Response) -> bool:
    """401, or 403 (Apple's FORBIDDEN for a session it no longer knows): authenticate once more. A 403 that
    is about the token itself then fails at /session, with its reason."""
    return response.status_code in (401, 403)


def _error(response: httpx.Response, path: str) -> DepError:
    code = dep.error_code(response.content)
    status = response.status_code
    if status == 429 or status >= 500:
        return DepUnavailable(status, code, path, retry_after=retry_after(response.headers.get("Retry-After")))
    return DepError(status, code, path)


def _refusal_hint(code: str | None) -> str:
    if code == dep.TERMS_NOT_SIGNED:
        return "accept the new terms and conditions in Apple Business Manager"
    return "the server token was refused: download a new one from Apple Business Manager"


def retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment is None:
        return None
    return max(0.0, (moment - clock.now()).total_seconds())
