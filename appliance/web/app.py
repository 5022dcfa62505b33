"""Builds the quart-trio app: blueprints, the request log line, request metrics, the error format."""

from __future__ import annotations

import importlib
import time

from quart import Quart, Response, current_app, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from appliance.logs import get_logger
from appliance.runtime import Runtime
from appliance.store.faults import StoreUnavailable
from appliance.web.errors import ApiError, api_error, slug, text_error, unavailable

log = get_logger("http")

# (module, role): "device" = what devices and browsers reach (check-in, commands, SCEP, enrollment),
# "api" = the admin API under /v1, "common" = health and metrics, served on every listener.
BLUEPRINTS = [
    ("appliance.web.health", "common"),
    ("appliance.web.scep", "device"),
    ("appliance.web.enroll", "device"),
    ("appliance.web.ddm_assets", "device"),
    ("appliance.web.ade", "device"),
    ("appliance.web.enrollment_api", "api"),
    ("appliance.web.push_api", "api"),
    ("appliance.web.abm_api", "api"),
    ("appliance.web.api", "api"),
    ("appliance.web.ddm_api", "api"),
    ("appliance.web.groups_api", "api"),
    ("appliance.web.openapi", "api"),
    ("appliance.web.metrics", "common"),
    ("appliance.web.audit_api", "api"),
    ("appliance.web.console", "api"),
]

ALL_ROLES = frozenset({"device", "api", "common"})


def runtime() -> Runtime:
    """The Runtime of the app serving the current request."""
    return current_app.extensions["appliance"]


def create_app(rt: Runtime, roles: frozenset[str] = ALL_ROLES) -> Quart:
    app = QuartTrio("appliance")
    app.extensions["appliance"] = rt
    app.config["MAX_CONTENT_LENGTH"] = rt.config.server.max_body_size
    app.config["BODY_TIMEOUT"] = 60
    app.config["RESPONSE_TIMEOUT"] = 120
    # Quart would otherwise sort keys and escape non-ASCII in JSON answers; keep integrators' order.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    for module_path, role in BLUEPRINTS:
        if role in roles:
            module = importlib.import_module(module_path)
            app.register_blueprint(module.blueprint)

    @app.before_request
    async def _start_clock() -> None:
        g.started = time.perf_counter()

    @app.after_request
    async def _log_request(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        record_request(rt, rule=rule, method=request.method, path=request.path, status=response.status_code,
                       started=g.get("started"), remote=request.remote_addr)
        return response

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        if _is_api(request.path) or isinstance(exc, ApiError):  # ApiError: /metrics too
            return api_error(exc.code or 500, getattr(exc, "error_code", None) or slug(exc), exc.description or "",
                             getattr(exc, "retry_after", None), **getattr(exc, "details", {}))
        return text_error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(StoreUnavailable)
    async def _store_unavailable(exc: StoreUnavailable) -> Response:
        # Disk full, I/O error, a lock held elsewhere: not the client's mistake and not a crash (logged once
        # by the store when the fault begins; /healthz and /metrics show it).
        return unavailable(exc, api=request.path.startswith("/v1") or request.path == "/metrics")

    @app.errorhandler(Exception)
    async def _crash(exc: Exception) -> Response:
        # Never expected: every input has a 4xx path. Logged in full so the cause can be fixed.
        log.exception("request_failed", method=request.method, path=request.path, error=repr(exc))
        if _is_api(request.path):
            return api_error(500, "internal_error", "internal error (logged)")
        return text_error(500, "internal error")

    # The two device URLs are the hot path: served as raw ASGI in front of quart (appliance.web.device).
    from appliance.web.device import DeviceEndpoints  # device imports this module

    if "device" in roles:
        app.asgi_app = DeviceEndpoints(app.asgi_app, rt)  # type: ignore[method-assign]
    app.asgi_app = NoWebSockets(app.asgi_app)  # type: ignore[method-assign]
    return app


def _is_api(path: str) -> bool:
    """The admin API answers errors as JSON: /v1 (NanoMDM's routes) and /api/v1/ddm (KMFDDM's)."""
    return path.startswith(("/v1", "/api/"))


class NoWebSockets:
    """The appliance has no WebSocket endpoint. A handshake (HTTP/1.1 Upgrade, HTTP/2 extended CONNECT)
    is refused here with a 400 and a reason: quart would route it to error handlers written for HTTP
    requests, which fail outside a request context and answer 500."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        body = b"this server speaks no WebSocket\n"
        await send({"type": "websocket.http.response.start", "status": 400, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})


def record_request(rt: Runtime, *, rule: str, method: str, path: str, status: int, started: float | None,
                   remote: str | None, enrollment_id: str | None = None, command_uuid: str | None = None) -> None:
    """The request metrics and log line, for quart's requests and the raw device endpoints alike."""
    duration = time.perf_counter() - started if started is not None else 0.0
    rt.metrics.http_requests.labels(rule, str(status)).inc()
    rt.metrics.http_duration.labels(rule).observe(duration)
    log.info(
        "request",
        method=method,
        path=path,
        status=status,
        duration_ms=f"{duration * 1000:.1f}",
        enrollment_id=enrollment_id,
        command_uuid=command_uuid,
        remote=remote,
    )
