"""Builds the quart-trio app: blueprints, the request log line, request metrics, the error format."""

from __future__ import annotations

import importlib
import time

from quart import Quart, Response, current_app, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from appliance.logs import get_logger
from appliance.runtime import Runtime
from appliance.web.errors import ApiError, api_error, slug, text_error

log = get_logger("http")

# (module, role): "device" = what devices and browsers reach (check-in, commands, SCEP, enrollment),
# "api" = the admin API under /v1, "common" = health and metrics, served on every listener.
BLUEPRINTS = [
    ("appliance.web.health", "common"),
    ("appliance.web.device", "device"),
    ("appliance.web.scep", "device"),
    ("appliance.web.enroll", "device"),
    ("appliance.web.challenges", "api"),
    ("appliance.web.push_api", "api"),
    ("appliance.web.api", "api"),
    ("appliance.web.openapi", "api"),
    ("appliance.web.metrics", "common"),
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
        _record(rt, response.status_code)
        return response

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        if request.path.startswith("/v1") or isinstance(exc, ApiError):  # ApiError: /metrics too
            return api_error(exc.code or 500, getattr(exc, "error_code", None) or slug(exc), exc.description or "")
        return text_error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    async def _crash(exc: Exception) -> Response:
        # Never expected: every input has a 4xx path. Logged in full so the cause can be fixed.
        log.exception("request_failed", method=request.method, path=request.path, error=repr(exc))
        if request.path.startswith("/v1"):
            return api_error(500, "internal_error", "internal error (logged)")
        return text_error(500, "internal error")

    return app


def _record(rt: Runtime, status: int) -> None:
    started = g.get("started")
    duration = time.perf_counter() - started if started is not None else 0.0
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    rt.metrics.http_requests.labels(rule, str(status)).inc()
    rt.metrics.http_duration.labels(rule).observe(duration)
    log.info(
        "request",
        method=request.method,
        path=request.path,
        status=status,
        duration_ms=f"{duration * 1000:.1f}",
        enrollment_id=g.get("enrollment_id"),
        command_uuid=g.get("command_uuid"),
        remote=request.remote_addr,
    )
