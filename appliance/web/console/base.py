"""The console's blueprint and what every page shares: the session, the signed-in user and their role,
the CSRF check on every POST, security headers, rendering, and the audit record of a person's action."""

from __future__ import annotations

import functools
import hmac
import time
from pathlib import Path
from urllib.parse import urlencode

from quart import Blueprint, Response, g, redirect, render_template, request
from werkzeug.datastructures import MultiDict

from appliance.service.accounts import ROLES, allows
from appliance.store import accounts as account_store
from appliance.store import audit
from appliance.web.app import runtime
from appliance.web.console.session import COOKIE, IDLE_SECONDS, Session, SessionCodec, password_fingerprint

HERE = Path(__file__).parent
blueprint = Blueprint("console", __name__, template_folder=str(HERE / "templates"))

PREFIX = "/console"
# No inline script or style anywhere; the QR code is inline SVG markup (no script in it).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


def codec() -> SessionCodec:
    rt = runtime()
    found = rt.__dict__.get("_console_codec")
    if found is None:
        # Session ages are read on the appliance's clock (appliance.clock), so tests can move it.
        found = rt.__dict__["_console_codec"] = SessionCodec(rt.console_key, lambda: rt.clock.now().timestamp())
    return found


class Refused(Exception):
    """A console request that must stop here with this status and reason (rendered as a page)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@blueprint.before_request
async def _open_session() -> Response | None:
    g.console_started = time.perf_counter()
    session = codec().loads(request.cookies.get(COOKIE))
    g.user = None
    if session is not None and session.user is not None:
        found = await runtime().store.read(account_store.get, session.user)
        if found is not None and hmac.compare_digest(session.fingerprint or "",
                                                     password_fingerprint(found["password_hash"])):
            g.user = {"name": found["name"], "role": found["role"]}
        else:
            session = None  # removed, or the password changed since: signed out
    g.session = session or codec().new()
    g.refresh_session = True
    if request.method == "POST":
        form = await request.form
        token = form.get("csrf_token") or request.headers.get("X-CSRF-Token")
        if not codec().csrf_ok(g.session, token):
            return await page_error(403, "This form has expired or did not come from this console "
                                         "(missing or wrong CSRF token). Go back, reload the page and try again.")
    return None


@blueprint.after_app_request
async def _console_headers(response: Response) -> Response:
    """Every answer under /console, errors and static files included, gets the security headers."""
    if not request.path.startswith(PREFIX):
        return response
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith(PREFIX + "/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    session = g.get("session")
    if session is not None and g.get("refresh_session", False):
        response.set_cookie(COOKIE, codec().dumps(codec().touched(session)), max_age=IDLE_SECONDS,
                            path="/", secure=True, httponly=True, samesite="Strict")
    started = g.get("console_started")
    if started is not None:
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


def sign_in(user: str, password_hash: str) -> None:
    g.session = codec().signed_in(user, password_hash)


def sign_out() -> None:
    g.session = codec().new()
    g.user = None


def requires(role: str):
    """The page needs a signed-in user with at least this role (viewer < operator < admin)."""
    assert role in ROLES

    def wrap(handler):
        @functools.wraps(handler)
        async def checked(*args, **kwargs):
            if g.user is None:
                if request.method == "GET" and not request.path.endswith(".json"):
                    return redirect(f"{PREFIX}/login?" + urlencode({"next": request.full_path.rstrip("?")}), 303)
                return await page_error(401, "Your session has ended: sign in again.")
            if not allows(g.user["role"], role):
                return await page_error(403, f"Your role ({g.user['role']}) cannot do this; it needs {role}.")
            try:
                return await handler(*args, **kwargs)
            except Refused as refused:
                return await page_error(refused.status, refused.reason)

        return checked

    return wrap


def can(role: str) -> bool:
    return g.get("user") is not None and allows(g.user["role"], role)


async def render(template: str, status: int = 200, **context) -> Response:
    body = await render_template(template, user=g.get("user"), csrf_token=codec().csrf_token(g.session),
                                 can=can, path=request.path, **context)
    return Response(body, status=status, content_type="text/html; charset=utf-8")


async def page_error(status: int, reason: str) -> Response:
    return await render("error.html", status=status, status_code=status, reason=reason)


async def form() -> MultiDict:
    return await request.form


def safe_next(target: str | None) -> str:
    """Where to go after signing in: only a console path of ours, never another site."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX + "/"


def who() -> dict:
    """Who is acting, read in the request: pass it as audit.record(conn, **who(), ...) inside the
    store.write that makes the change (the database thread has no request context)."""
    return {"actor": f"user {g.user['name']}" if g.get("user") else "anonymous", "remote": request.remote_addr}


async def audit_now(action: str, target=None, details: dict | None = None) -> None:
    """Audit an action whose change another module committed (an enqueue): its own small write."""
    stamp = who()
    await runtime().store.write(lambda conn: audit.record(conn, **stamp, action=action, target=target,
                                                          details=details))


@blueprint.app_template_filter("when")
def when(value: str | None) -> str:
    """Database time text -> '2026-11-21 21:30:00' (UTC; seconds are enough on a screen)."""
    if not value:
        return "never"
    return str(value)[:19].replace("T", " ")
