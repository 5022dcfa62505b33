"""Serve with hypercorn and hand the TLS client certificate to the app (ASGI TLS extension).

hypercorn 0.18 finishes the TLS handshake but never puts the client certificate in the
scope (upstream issues pgjones/hypercorn #62, #324). This module is the one place that works
around it: it swaps hypercorn's trio per-connection server for a subclass that completes the
handshake itself, reads the leaf certificate, and wraps the app for that connection so every
request on it carries

    scope["extensions"]["tls"] = {
        "client_cert_der": bytes | None,    # leaf certificate, None when the client sent none
        "client_cert_chain": [PEM str],     # ASGI TLS extension field (leaf only: Python 3.11
        "tls_version": int | None,          #   exposes no chain), tls_version per the spec
        "client_cert_name": None, "client_cert_error": None, "server_cert": None, "cipher_suite": None,
    }

It relies on hypercorn internals (hypercorn.trio.run.TCPServer, TCPServer.run/stream/app,
the app-wrapper call signature), hence the pin to 0.18.x and tests/server/test_tls_peer.py, which
fails when an upgrade breaks the hook.
"""

from __future__ import annotations

import importlib.metadata
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.tcp_server import TCPServer

SUPPORTED_HYPERCORN = "0.18."

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (Python's ssl has no name for it): the handshake then
# leaves validity dates to the appliance's own trust check, which applies the configured
# clock skew and answers an expired device with a clear 403 instead of a TLS alert.
_VERIFY_NO_CHECK_TIME = 0x200000


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


class _ClientCertTCPServer(TCPServer):
    async def run(self) -> None:
        if isinstance(self.stream, trio.SSLStream):
            try:
                with trio.fail_after(self.config.ssl_handshake_timeout):
                    await self.stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                # hypercorn would return without closing; close so the socket is not leaked.
                await trio.aclose_forcefully(self.stream)
                return
            except BaseException:  # cancelled mid-handshake (shutdown): close, then let it through
                await trio.aclose_forcefully(self.stream)
                raise
            self.app = _ClientCertApp(self.app, _tls_facts(self.stream))
        # hypercorn's own run() sees a finished handshake (do_handshake returns at once).
        await super().run()


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
    """Make hypercorn's trio worker build our per-connection server. Idempotent."""
    version = importlib.metadata.version("hypercorn")
    if not version.startswith(SUPPORTED_HYPERCORN):
        raise RuntimeError(
            f"appliance.web.tls_peer hooks hypercorn {SUPPORTED_HYPERCORN}x internals, found {version}"
        )
    current = hypercorn_run.TCPServer
    if current is _ClientCertTCPServer:
        return
    if current is not TCPServer:
        raise RuntimeError("hypercorn.trio.run.TCPServer was already replaced by someone else")
    hypercorn_run.TCPServer = _ClientCertTCPServer


async def serve(
    app,
    hypercorn_config: HypercornConfig,
    *,
    shutdown_trigger: Callable[..., Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn.trio.serve, with the TLS client certificate in each request's scope.
    Reports the bound addresses through task_status, like hypercorn (use nursery.start)."""
    install_hook()
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
