"""A stand-in for Apple's Device Assignment service (the ABM "DEP" API), written from Apple's documentation,
sharing no code with the appliance: a raw ASGI app on hypercorn on loopback (HTTP, or HTTPS given a cert).

What it does as Apple documents it:
- GET /session checks an OAuth 1.0a HMAC-SHA1 signature (recomputed here with hmac/hashlib) and answers an
  auth_session_token; other calls need X-ADM-Auth-Session, and a session ends after `session_ttl`
  seconds of the simulator's clock (401 UNAUTHORIZED); `rotate_sessions` hands out a new token in the
  X-ADM-Auth-Session header of an answer.
- POST /server/devices pages through a snapshot of the server's devices (limit up to 1000); its last cursor
  starts the syncs; a fetch from an exhausted cursor is 400 EXHAUSTED_CURSOR.
- POST /devices/sync answers the changes since its cursor (added, modified, deleted, with op_date); a cursor
  older than 7 days is 400 EXPIRED_CURSOR, one never handed out 400 INVALID_CURSOR.
- POST /profile defines a profile; POST (or PUT) /profile/devices assigns it per device (SUCCESS,
  NOT_ACCESSIBLE, FAILED, THROTTLED); DELETE /profile/devices removes it; GET /account.
Scriptable faults: 429/503 with Retry-After on chosen paths, the echoed-cursor quirk (a page that answers the
cursor it was sent with more_to_follow true), devices in cooldown (left out of syncs, THROTTLED on assign),
assignments failing N times, a request held until the test releases it. Every request is recorded.

    sim = DepSim()
    server = sim.add_server("main")                     # an MDM server entry with its own token and devices
    server.add_devices(2500)
    base_url = await nursery.start(sim.run)             # http://127.0.0.1:PORT
    token_file = sim.token_file("main", certificate_pem)  # the .p7m ABM would offer for download
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from tests.support.asgi import read_body, serve_lifespan

CURSOR_DAYS = 7


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Token:
    consumer_key: str
    consumer_secret: str
    access_token: str
    access_secret: str
    expiry: datetime

    def as_json(self) -> dict:
        return {"consumer_key": self.consumer_key, "consumer_secret": self.consumer_secret,
                "access_token": self.access_token, "access_secret": self.access_secret,
                "access_token_expiry": iso(self.expiry)}


@dataclass
class Event:
    serial: str
    op_type: str
    op_date: datetime


@dataclass
class Cursor:
    kind: str  # "fetch" or "sync"
    issued: datetime
    snapshot: list[str] = field(default_factory=list)  # fetch: the serials the fetch pages through
    offset: int = 0  # fetch: how far; sync: index into the event log
    events_at: int = 0  # fetch: the event log's length when it began (where its syncs start)


@dataclass
class Request:
    method: str
    path: str
    status: int
    body: dict | None
    cursor: str | None = None  # the cursor sent, for fetch and sync
    answer: object = None  # what was answered (JSON)

    @property
    def answered_cursor(self) -> str | None:
        return self.answer.get("cursor") if isinstance(self.answer, dict) else None


@dataclass
class Fault:
    path: str
    status: int
    retry_after: str | None
    times: int


class SimServer:
    """One MDM server entry in ABM: its token, devices, change log, profiles and cursors."""

    def __init__(self, sim: DepSim, name: str) -> None:
        self.sim = sim
        self.name = name
        self.token = Token(f"CK_{secrets.token_hex(16)}", f"CS_{secrets.token_hex(16)}",
                           f"AT_{secrets.token_hex(32)}", f"AS_{secrets.token_hex(16)}",
                           sim.now() + timedelta(days=365))
        self.devices: dict[str, dict] = {}
        self.events: list[Event] = []
        self.profiles: dict[str, dict] = {}
        self.cursors: dict[str, Cursor] = {}
        self.cooldown: set[str] = set()
        self.fail_assign: dict[str, int] = {}
        self.uuid = str(uuid.uuid4()).upper()
        self._serials = 0

    def add_devices(self, count: int, *, model: str = "MacBook Air", os: str = "OSX", family: str = "Mac",
                    prefix: str = "C02SIM") -> list[str]:
        serials = []
        for _ in range(count):
            self._serials += 1
            serials.append(f"{prefix}{self._serials:06d}")
        for serial in serials:
            self.add(serial, model=model, os=os, family=family)
        return serials

    def add(self, serial: str, *, model: str = "iPhone 15", os: str = "iOS", family: str = "iPhone",
            description: str | None = None, color: str = "SPACE GRAY") -> None:
        now = self.sim.now()
        self.devices[serial] = {
            "serial_number": serial, "model": model, "description": description or f"{model} {serial}",
            "color": color, "os": os, "device_family": family, "profile_status": "empty",
            "device_assigned_by": "it@example.org", "device_assigned_date": iso(now),
        }
        self.events.append(Event(serial, "added", now))

    def modify(self, serial: str, **changes) -> None:
        self.devices[serial].update(changes)
        self.events.append(Event(serial, "modified", self.sim.now()))

    def remove(self, serial: str) -> None:
        self.devices.pop(serial)
        self.events.append(Event(serial, "deleted", self.sim.now()))

    def token_json(self) -> dict:
        return self.token.as_json()

    # --- the endpoints --------------------------------------------------------------------------------
    def fetch(self, body: dict) -> tuple[int, object]:
        limit = _limit(body)
        if limit is None:
            return 400, "MALFORMED_REQUEST_BODY"
        cursor_id = body.get("cursor")
        if cursor_id:
            cursor = self.cursors.get(cursor_id)
            if cursor is None or cursor.kind != "fetch":
                return 400, "INVALID_CURSOR"
            if self.sim.now() - cursor.issued > timedelta(days=CURSOR_DAYS):
                return 400, "EXPIRED_CURSOR"
            if cursor.offset >= len(cursor.snapshot):
                return 400, "EXHAUSTED_CURSOR"
        else:
            cursor = Cursor("fetch", self.sim.now(), snapshot=sorted(self.devices), events_at=len(self.events))
        page = [s for s in cursor.snapshot[cursor.offset:cursor.offset + limit] if s in self.devices]
        following = Cursor("fetch", self.sim.now(), snapshot=cursor.snapshot, offset=cursor.offset + limit,
                           events_at=cursor.events_at)
        more = following.offset < len(cursor.snapshot)
        answer_cursor = self._hand_out(following, cursor_id, more)
        return 200, {"devices": [dict(self.devices[s]) for s in page], "cursor": answer_cursor,
                     "more_to_follow": more or answer_cursor == cursor_id, "fetched_until": iso(self.sim.now())}

    def sync(self, body: dict) -> tuple[int, object]:
        limit = _limit(body)
        if limit is None:
            return 400, "MALFORMED_REQUEST_BODY"
        cursor_id = body.get("cursor")
        if not cursor_id:
            return 400, "CURSOR_REQUIRED"
        cursor = self.cursors.get(cursor_id)
        if cursor is None:
            return 400, "INVALID_CURSOR"
        if self.sim.now() - cursor.issued > timedelta(days=CURSOR_DAYS):
            return 400, "EXPIRED_CURSOR"
        start = cursor.offset if cursor.kind == "sync" else cursor.events_at
        if cursor.kind == "fetch" and cursor.offset < len(cursor.snapshot):
            return 400, "INVALID_CURSOR"  # a fetch still in progress has no sync position
        # Devices in cooldown are left out of syncs (Apple does so until the cooldown ends).
        pending = [(index, e) for index, e in enumerate(self.events[start:], start) if e.serial not in self.cooldown]
        more = len(pending) > limit
        end = pending[limit - 1][0] + 1 if more else len(self.events)
        page = [event for _, event in pending[:limit]]
        following = Cursor("sync", self.sim.now(), offset=end)
        answer_cursor = self._hand_out(following, cursor_id, more)
        records = []
        for event in page:
            record = dict(self.devices.get(event.serial, {"serial_number": event.serial}))
            record.update(op_type=event.op_type, op_date=iso(event.op_date))
            records.append(record)
        return 200, {"devices": records, "cursor": answer_cursor, "more_to_follow": more or answer_cursor == cursor_id}

    def _hand_out(self, cursor: Cursor, sent: str | None, more: bool) -> str:
        if self.sim.echo_cursor and sent:
            self.sim.echo_cursor -= 1
            return sent  # the quirk: the same cursor back, more_to_follow true
        cursor_id = secrets.token_hex(20)
        self.cursors[cursor_id] = cursor
        return cursor_id

    def define(self, body: dict) -> tuple[int, object]:
        if not isinstance(body.get("profile_name"), str) or not body["profile_name"]:
            return 400, "CONFIG_NAME_REQUIRED"
        url = body.get("url")
        if not isinstance(url, str) or not url.startswith("https://"):
            return 400, "CONFIG_URL_INVALID"
        profile_uuid = uuid.uuid4().hex.upper()
        self.profiles[profile_uuid] = body
        return 200, {"profile_uuid": profile_uuid, "devices": {}}

    def assign(self, body: dict) -> tuple[int, object]:
        profile_uuid, serials = body.get("profile_uuid"), body.get("devices")
        if profile_uuid not in self.profiles:
            return 400, "PROFILE_NOT_FOUND"
        if not isinstance(serials, list) or not serials:
            return 400, "DEVICE_ID_REQUIRED"
        results = {}
        now = self.sim.now()
        for serial in serials:
            if serial not in self.devices:
                results[serial] = "NOT_ACCESSIBLE"
            elif serial in self.cooldown:
                results[serial] = "THROTTLED"
            elif self.fail_assign.get(serial, 0) > 0:
                self.fail_assign[serial] -= 1
                results[serial] = "FAILED"
            else:
                self.devices[serial].update(profile_uuid=profile_uuid, profile_status="assigned",
                                            profile_assign_time=iso(now))
                self.events.append(Event(serial, "modified", now))
                results[serial] = "SUCCESS"
        return 200, {"profile_uuid": profile_uuid, "devices": results}

    def unassign(self, body: dict) -> tuple[int, object]:
        results = {}
        for serial in body.get("devices") or []:
            device = self.devices.get(serial)
            if device is None:
                results[serial] = "NOT_ACCESSIBLE"
                continue
            device.update(profile_status="empty")
            device.pop("profile_uuid", None)
            self.events.append(Event(serial, "modified", self.sim.now()))
            results[serial] = "SUCCESS"
        return 200, {"devices": results}

    def account(self) -> tuple[int, object]:
        return 200, {"server_name": f"{self.name} (simulated)", "server_uuid": self.uuid,
                     "org_name": "Example School", "org_email": "it@example.org", "org_phone": "+1 555 0100",
                     "org_type": "edu", "org_version": "v2", "admin_id": "admin@example.org"}


def _limit(body: dict) -> int | None:
    limit = body.get("limit", 100)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        return None
    return min(limit, 1000)


class DepSim:
    def __init__(self, *, session_ttl: float = 180.0, tls: tuple[str, str] | None = None) -> None:
        self.servers: dict[str, SimServer] = {}
        self.sessions: dict[str, tuple[SimServer, datetime]] = {}
        self.session_ttl = session_ttl
        self.rotate_sessions = False
        self.tls = tls
        self.offset = timedelta(0)
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.echo_cursor = 0  # the next N fetch/sync pages answer the cursor they were sent
        self.holds: dict[str, tuple[int, trio.Event]] = {}  # path -> (requests to let through, then wait)
        self.held = trio.Event()  # set when a request starts waiting on a hold
        self.changed = trio.Event()
        self.nonces: set[str] = set()
        self.terms_not_signed = False
        self.port = 0

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta

    def add_server(self, name: str) -> SimServer:
        server = self.servers[name] = SimServer(self, name)
        return server

    def fail(self, path: str, status: int, retry_after: str | None = "1", times: int = 1) -> None:
        self.faults.append(Fault(path, status, retry_after, times))

    def hold(self, path: str, after: int = 0) -> trio.Event:
        """After `after` more requests to `path`, the next one waits until the returned event is set."""
        event = trio.Event()
        self.holds[path] = (after, event)
        return event

    def calls(self, path: str, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    async def wait_for(self, predicate, timeout: float = 30) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self.changed.wait()

    # --- token files ----------------------------------------------------------------------------------
    def token_file(self, name: str, certificate_pem: bytes, *, cipher: str = "aes256",
                   token: dict | None = None) -> bytes:
        """The server_token_*.p7m ABM would offer: S/MIME EnvelopedData to `certificate_pem`, made by openssl."""
        payload = json.dumps(token or self.servers[name].token_json())
        message = ("Content-Type: text/plain;charset=UTF-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
                   f"-----BEGIN MESSAGE-----\r\n{payload}\r\n-----END MESSAGE-----\r\n").encode()
        with tempfile.TemporaryDirectory() as tmp:
            cert = Path(tmp, "cert.pem")
            cert.write_bytes(certificate_pem)
            done = subprocess.run(["openssl", "smime", "-encrypt", f"-{cipher}", str(cert)], input=message,
                                  capture_output=True, timeout=30, check=True)
        return done.stdout

    # --- HTTP -----------------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED, stop: trio.Event | None = None) -> None:
        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 1
        scheme = "http"
        if self.tls is not None:
            config.certfile, config.keyfile = self.tls
            scheme = "https"

        class Status:
            def started(inner, binds) -> None:  # noqa: N805
                bind = binds[0]
                self.port = int(bind.rsplit(":", 1)[1])
                task_status.started(f"{scheme}://127.0.0.1:{self.port}")

        await serve(self.app, config, shutdown_trigger=(stop or trio.Event()).wait, task_status=Status())

    async def app(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await serve_lifespan(receive, send)
        raw = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        hold = self.holds.get(path)
        if hold is not None:
            let_through, event = hold
            if let_through > 0:
                self.holds[path] = (let_through - 1, event)
            else:
                del self.holds[path]
                self.held.set()
                await event.wait()
        status, answer, extra = self.handle(method, path, headers, raw)
        body = json.dumps(answer).encode()
        response_headers = [(b"content-type", b"application/json;charset=UTF8"),
                            (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})
        self.changed.set()
        self.changed = trio.Event()

    def handle(self, method: str, path: str, headers: dict, raw: bytes) -> tuple[int, object, list]:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        cursor = body.get("cursor") if isinstance(body, dict) else None
        status, answer, extra = self._route(method, path, headers, body, raw)
        self.requests.append(Request(method, path, status, body if isinstance(body, dict) else None, cursor, answer))
        return status, answer, extra

    def _route(self, method: str, path: str, headers: dict, body, raw: bytes) -> tuple[int, object, list]:
        for fault in self.faults:
            if fault.path == path and fault.times > 0:
                fault.times -= 1
                extra = [(b"retry-after", fault.retry_after.encode())] if fault.retry_after else []
                return fault.status, "SERVICE_UNAVAILABLE" if fault.status >= 500 else "TOO_MANY_REQUESTS", extra
        if path == "/session" and method == "GET":
            return self._session(headers)
        server, why = self._authenticated(headers)
        if server is None:
            # An expired session is 401; one never handed out, 403 FORBIDDEN (as depsim answers after a restart).
            return (403 if why == "FORBIDDEN" else 401), why, []
        extra = []
        if self.rotate_sessions:
            renewed = secrets.token_hex(24)
            self.sessions[renewed] = (server, self.now())
            extra.append((b"x-adm-auth-session", renewed.encode()))
        if raw and not isinstance(body, dict):
            return 400, "MALFORMED_REQUEST_BODY", extra
        body = body or {}
        routes = {("GET", "/account"): lambda: server.account(),
                  ("POST", "/server/devices"): lambda: server.fetch(body),
                  ("POST", "/devices/sync"): lambda: server.sync(body),
                  ("POST", "/profile"): lambda: server.define(body),
                  ("POST", "/profile/devices"): lambda: server.assign(body),
                  ("PUT", "/profile/devices"): lambda: server.assign(body),
                  ("DELETE", "/profile/devices"): lambda: server.unassign(body)}
        handler = routes.get((method, path))
        if handler is None:
            return 404, "NOT_FOUND", extra
        status, answer = handler()
        return status, answer, extra

    def _authenticated(self, headers: dict) -> tuple[SimServer | None, str]:
        session = headers.get("x-adm-auth-session")
        found = self.sessions.get(session or "")
        if found is None:
            return None, "FORBIDDEN"
        server, opened = found
        if (self.now() - opened).total_seconds() > self.session_ttl:
            del self.sessions[session]
            return None, "UNAUTHORIZED"
        return server, ""

    def _session(self, headers: dict) -> tuple[int, object, list]:
        params = _oauth_params(headers.get("authorization", ""))
        server = next((s for s in self.servers.values() if s.token.consumer_key == params.get("oauth_consumer_key")),
                      None)
        if server is None or params.get("oauth_token") != server.token.access_token:
            return 403, "ACCESS_DENIED", []
        if params.get("oauth_signature_method") != "HMAC-SHA1" or params.get("oauth_version", "1.0") != "1.0":
            return 400, "OAUTH_PARAMETERS", []
        nonce = params.get("oauth_nonce", "")
        if not nonce or nonce in self.nonces:
            return 401, "NONCE_REUSED", []
        timestamp = params.get("oauth_timestamp", "")
        if not timestamp.isdigit() or abs(int(timestamp) - self.now().timestamp()) > 300:
            return 401, "TIMESTAMP_REFUSED", []
        expected = _signature("GET", f"http://127.0.0.1:{self.port}/session" if self.tls is None
                              else f"https://127.0.0.1:{self.port}/session", params, server.token)
        if not hmac.compare_digest(expected, params.get("oauth_signature", "")):
            return 401, "SIGNATURE_INVALID", []
        if self.now() >= server.token.expiry:
            return 403, "ACCESS_DENIED", []
        if self.terms_not_signed:
            return 403, "T_C_NOT_SIGNED", []
        self.nonces.add(nonce)
        session = secrets.token_hex(24)
        self.sessions[session] = (server, self.now())
        return 200, {"auth_session_token": session}, []


def _oauth_params(header: str) -> dict[str, str]:
    if not header.startswith("OAuth "):
        return {}
    params = {}
    for part in header[len("OAuth "):].split(","):
        key, _, value = part.strip().partition("=")
        params[unquote(key)] = unquote(value.strip('"'))
    params.pop("realm", None)
    return params


def _encode(text: str) -> str:
    return quote(text, safe="-._~")


def _signature(method: str, url: str, params: dict[str, str], token: Token) -> str:
    """RFC 5849 3.4: recomputed from the spec here, to check the appliance's signing independently."""
    parts = urlsplit(url)
    base_uri = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}"
    signed = sorted((_encode(k), _encode(v)) for k, v in params.items() if k != "oauth_signature")
    normalized = "&".join(f"{k}={v}" for k, v in signed)
    base = "&".join([method, _encode(base_uri), _encode(normalized)])
    key = f"{_encode(token.consumer_secret)}&{_encode(token.access_secret)}"
    return base64.b64encode(hmac.new(key.encode(), base.encode(), hashlib.sha1).digest()).decode()


def _main() -> None:
    """Run alone, for the benchmark: python tests/support/dep_sim.py --devices 10000 --port-file F --token-file T"""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--token-file", required=True, help="where to write the server token's JSON")
    args = parser.parse_args()
    sim = DepSim()
    server = sim.add_server("main")
    server.add_devices(args.devices)
    Path(args.token_file).write_text(json.dumps(server.token_json()))

    async def serve_forever() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(sim.run)
            Path(args.port_file).write_text(url)

    trio.run(serve_forever)


if __name__ == "__main__":
    _main()
