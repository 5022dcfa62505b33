"""Serve with hypercorn: the TLS client certificate in each request's scope, and faults kept to the
connection they happen on. The one module that leans on hypercorn internals.

1. hypercorn 0.18 finishes the TLS handshake but never puts the client certificate in the scope
   (upstream issues pgjones/hypercorn #62, #324). hypercorn's trio per-connection server is swapped for
   a subclass that completes the handshake itself, reads the leaf certificate, and wraps the app for
   that connection so every request on it carries

    scope["extensions"]["tls"] = {
        "client_cert_der": bytes | None,    # leaf certificate, None when the client sent none
        "client_cert_chain": [PEM str],     # ASGI TLS extension field (leaf only: Python 3.11
        "tls_version": int | None,          #   exposes no chain), tls_version per the spec
        "client_cert_name": None, "client_cert_error": None, "server_cert": None, "cipher_suite": None,
    }

2. An exception escaping one connection's handling would end hypercorn's serve_listeners, and so the
   process. The same subclass keeps it with its connection: closed, one log line, counted
   (mdm_connection_errors_total).

3. A request answered before its body was read (a 404, 401 or 413) could end the process (HTTP/2),
   hang its connection, or never reach the client: install_hook also puts in the subclasses of
   appliance.web.early_answer.

It relies on hypercorn internals (hypercorn.trio.run.TCPServer, TCPServer.run/stream/app, the
app-wrapper call signature, and those early_answer names), hence the pin to 0.18.x and
tests/server/test_tls_peer.py and tests/server/test_hostile_traffic.py, which fail when an upgrade
breaks a hook.
"""

from __future__ import annotations

import importlib.metadata
import ssl
import traceback
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from pathlib import Path

import hypercorn.protocol as hypercorn_protocol
import hypercorn.trio.tcp_server as hypercorn_tcp_server
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer

from appliance.logs import get_logger
from appliance.web.early_answer import AppTaskGroup, EarlyAnswerH2, EarlyAnswerH11

log = get_logger("connection")

SUPPORTED_HYPERCORN = "0.18."

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (Python's ssl has no name for it): the handshake then
# leaves validity dates to the appliance's own trust check, which applies the configured
# clock skew and answers an expired device with a clear 403 instead of a TLS alert.
_VERIFY_NO_CHECK_TIME = 0x200000

# Counts a connection error by reason ("tls_handshake", "internal"). Set by serve(); every connection
# task inherits it from the serve() call that started its listener (trio copies the context into each
# task), so several servers in one process count apart.
_count_error: ContextVar[Callable[[str], None]] = ContextVar("count_connection_error", default=lambda reason: None)


class _ClientCertApp:
    """The connection's app, adding the connection's TLS facts to each request's scope."""

    __slots__ = ("app", "tls")

    def __init__(self, app, tls: dict) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope, receive, send, sync_spawn, call_soon) -> None:
        if scope["type"] in ("http", "websocket"):
            scope.setdefault("extensions", {})["tls"] = dict(self.tls)
        await self.app(scope, receive, send, sync_spawn, call_soon)


class _ApplianceTCPServer(TCPServer):
    """hypercorn's per-connection server: the client certificate in the scope, and any error kept here."""

    async def run(self) -> None:
        try:
            await self._serve()
        except* Exception as failure:
            # One connection's error (a bug, ours or hypercorn's) must not end serve_listeners.
            _report("internal", self.stream, failure)
            await trio.aclose_forcefully(self.stream)

    async def _serve(self) -> None:
        if isinstance(self.stream, trio.SSLStream):
            try:
                with trio.fail_after(self.config.ssl_handshake_timeout):
                    await self.stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError) as failure:
                # hypercorn would return without closing; close so the socket is not leaked.
                _report("tls_handshake", self.stream, failure)
                await trio.aclose_forcefully(self.stream)
                return
            except BaseException:  # cancelled mid-handshake (shutdown): close, then let it through
                await trio.aclose_forcefully(self.stream)
                raise
            self.app = _ClientCertApp(self.app, _tls_facts(self.stream))
        # hypercorn's own run() sees a finished handshake (do_handshake returns at once).
        await super().run()


def _report(reason: str, stream, failure: BaseException) -> None:
    """One log line and one count per failed connection."""
    _count_error.get()(reason)
    leaf = failure
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    cause = leaf.__cause__ or leaf  # trio wraps the ssl module's error in BrokenResourceError
    frames = traceback.extract_tb(leaf.__traceback__)
    where = f"{'/'.join(frames[-1].filename.split('/')[-3:])}:{frames[-1].lineno}" if frames else None
    fields = {"reason": reason, "client": _peer(stream), "error": repr(cause)[:300], "at": where}
    if reason == "internal":
        log.error("connection_failed", **fields)
    else:  # scanners and TCP health checks fail handshakes all day: only when asked for
        log.debug("connection_failed", **fields)


def _peer(stream) -> str | None:
    sock = stream.transport_stream.socket if isinstance(stream, trio.SSLStream) else stream.socket
    try:
        host, port = sock.getpeername()[:2]
    except OSError:  # already gone
        return None
    return f"{host}:{port}"


def _tls_facts(stream: trio.SSLStream) -> dict:
    der = stream.getpeercert(binary_form=True)
    return {
        "client_cert_der": der,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "server_cert": None,
        "tls_version": _TLS_VERSIONS.get(stream.version()),
        "cipher_suite": None,
    }


def client_cert_der(scope: dict) -> bytes | None:
    """The TLS client certificate of the request, or None (no TLS, or the client sent none)."""
    return scope.get("extensions", {}).get("tls", {}).get("client_cert_der")


def install_hook() -> None:
    """Make hypercorn's trio worker build our per-connection server, protocols and task group. Idempotent."""
    version = importlib.metadata.version("hypercorn")
    if not version.startswith(SUPPORTED_HYPERCORN):
        raise RuntimeError(
            f"appliance.web.tls_peer hooks hypercorn {SUPPORTED_HYPERCORN}x internals, found {version}"
        )
    _replace(hypercorn_run, "TCPServer", TCPServer, _ApplianceTCPServer)
    # Requests answered before their body was read (appliance.web.early_answer): hypercorn builds these
    # by their module-level names (ProtocolWrapper, TCPServer.run).
    _replace(hypercorn_protocol, "H2Protocol", H2Protocol, EarlyAnswerH2)
    _replace(hypercorn_protocol, "H11Protocol", H11Protocol, EarlyAnswerH11)
    _replace(hypercorn_tcp_server, "TaskGroup", TaskGroup, AppTaskGroup)


def _replace(module, name: str, original: type, ours: type) -> None:
    current = getattr(module, name)
    if current is ours:
        return
    if current is not original:
        raise RuntimeError(f"{module.__name__}.{name} was already replaced by someone else")
    setattr(module, name, ours)


async def serve(
    app,
    hypercorn_config: HypercornConfig,
    *,
    shutdown_trigger: Callable[..., Awaitable[None]] | None = None,
    count_connection_error: Callable[[str], None] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn.trio.serve, with the TLS client certificate in each request's scope and each
    connection's errors kept to it (and counted by reason with `count_connection_error`).
    Reports the bound addresses through task_status, like hypercorn (use nursery.start)."""
    install_hook()
    if count_connection_error is not None:
        _count_error.set(count_connection_error)
    await hypercorn_serve(app, hypercorn_config, shutdown_trigger=shutdown_trigger, task_status=task_status)


def request_client_certificates(hypercorn_config: HypercornConfig, ca_bundle: Path) -> None:
    """Ask TLS clients for a certificate without requiring one (devices that sign with
    Mdm-Signature need not send one). A certificate sent must chain to a CA in `ca_bundle`
    (PEM; the appliance CA plus [identity] trusted_ca_files), each trusted on its own
    (partial chains allowed, as in TrustAnchors); dates are left to the trust check."""
    hypercorn_config.ca_certs = str(ca_bundle)
    hypercorn_config.verify_mode = ssl.CERT_OPTIONAL
    hypercorn_config.verify_flags = ssl.VerifyFlags(
        ssl.VERIFY_X509_TRUSTED_FIRST | ssl.VERIFY_X509_PARTIAL_CHAIN
    ) | _VERIFY_NO_CHECK_TIME


def serve_certificate_from(hypercorn_config: HypercornConfig, server_tls) -> None:
    """Hand the SSLContext hypercorn builds for this listener to `server_tls` (identity.server_tls), so a
    renewed certificate reaches new handshakes without a restart. hypercorn builds it once per serve, with
    Config.create_ssl_context (public API), which this wraps."""
    build = hypercorn_config.create_ssl_context

    def create_ssl_context():
        context = build()
        return server_tls.track(context) if context is not None else None

    hypercorn_config.create_ssl_context = create_ssl_context
