"""The one HTTP error format: JSON {"error": {"code", "message"}} for the admin API, a short plain-text
reason for everything a device or a browser talks to."""

from __future__ import annotations

import json

from quart import Response
from werkzeug.exceptions import HTTPException

from appliance.store.faults import StoreUnavailable


class ApiError(HTTPException):
    """Raise from a /v1 handler: answered as JSON with a stable code (and any details, e.g. a position)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None, **details) -> None:
        super().__init__(description=message)
        self.code = status
        self.error_code = code
        self.message = message
        self.retry_after = retry_after
        self.details = details

    def get_response(self, environ=None, scope=None) -> Response:  # noqa: ARG002
        return api_error(self.code, self.error_code, self.message, self.retry_after, **self.details)


def api_error(status: int, code: str, message: str, retry_after: int | None = None, **details) -> Response:
    body = json.dumps({"error": {"code": code, "message": message, **details}})
    return _retry_after(Response(body, status=status, content_type="application/json"), retry_after)


def text_error(status: int, reason: str, retry_after: int | None = None) -> Response:
    response = Response(reason + "\n", status=status, content_type="text/plain; charset=utf-8")
    return _retry_after(response, retry_after)


def _retry_after(response: Response, seconds: int | None) -> Response:
    """429 and 503 say when to come back (RFC 9110 10.2.3: whole seconds)."""
    if seconds is not None:
        response.headers["Retry-After"] = str(seconds)
    return response


def unavailable(exc: StoreUnavailable, *, api: bool) -> Response:
    """503 for a storage fault: nothing of the request was stored, so the same request may simply come again."""
    reason = unavailable_reason(exc)
    response = api_error(503, "storage_unavailable", reason) if api else text_error(503, reason)
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def unavailable_reason(exc: StoreUnavailable) -> str:
    return f"{exc.cause}: nothing of this request was stored; try again in {exc.retry_after} s"


def slug(exc: HTTPException) -> str:
    """A stable machine code for werkzeug's standard errors: 'Not Found' -> 'not_found'."""
    return (exc.name or "error").lower().replace(" ", "_").replace("'", "")
