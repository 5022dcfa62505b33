"""What every command shares: the --config option, one-line failures, and the admin API client."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click

from appliance.bootstrap import read_api_key
from appliance.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, Config, ConfigError, load_config, parse_listen

config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(path_type=Path), default=None,
    help=f"The appliance's TOML file [default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH}].",
)


class CliError(click.ClickException):
    """One line on stderr, exit 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


def load_config_or_exit(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        where = exc.path or "config"
        for problem in exc.problems:
            click.echo(f"{where}: {problem}", err=True)
        sys.exit(1)


def _local_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


class ApiClient:
    """A small HTTPS client for our own admin API (stdlib only: the CLI needs no extra dependency).

    It connects to the local listener ([api] listen if set, else [server] listen) and verifies TLS
    against the appliance CA for a generated certificate, or the system trust store and public_url's
    host name for an operator's own certificate.
    """

    def __init__(self, config: Config, url: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0) -> None:
        self.config = config
        self.timeout = timeout
        url = url or os.environ.get("MDM_APPLIANCE_URL")
        if url:
            parts = urlsplit(url)
            self.scheme, self.host, self.port = parts.scheme, parts.hostname or "127.0.0.1", parts.port
            self.server_name = self.host
        else:
            host, port = parse_listen(config.api.listen or config.server.listen)
            self.scheme = "https" if config.server.tls else "http"
            self.host, self.port = _local_host(host), port
            self.server_name = self.host if config.server.tls_cert is None else config.server.public_host
        self.port = self.port or (443 if self.scheme == "https" else 80)
        self.api_key = api_key or os.environ.get("MDM_APPLIANCE_API_KEY") or read_api_key(config)
        if not self.api_key:
            raise CliError(
                f"no API key: set [api] key, or run this where {config.data_dir}/api.key is readable"
            )

    def _ssl_context(self) -> ssl.SSLContext:
        cafile, source = os.environ.get("MDM_APPLIANCE_CA"), "$MDM_APPLIANCE_CA"
        if cafile is None and self.config.server.tls_cert is None:
            cafile, source = str(self.config.data_dir / "ca.crt"), "the appliance CA"
        try:
            return ssl.create_default_context(cafile=cafile)
        except OSError as exc:
            raise CliError(f"cannot read the CA bundle {cafile} ({source}): {exc.strerror or exc}") from None
        except ssl.SSLError as exc:
            raise CliError(f"the CA bundle {cafile} ({source}) holds no usable PEM certificate "
                           f"({exc.reason or exc})") from None

    def _connection(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            context, server_name = self._ssl_context(), self.server_name

            class Verified(http.client.HTTPSConnection):
                def connect(self) -> None:  # SNI and verification name may differ from the address
                    sock = socket.create_connection((self.host, self.port), self.timeout)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.sock = context.wrap_socket(sock, server_hostname=server_name)

            return Verified(self.host, self.port, timeout=self.timeout, context=context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if content_type:
            headers["Content-Type"] = content_type
        connection = self._connection()
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            self.last_headers = response.getheaders()  # e.g. the DDM API's Warning headers
            return response.status, response.read()
        except ssl.SSLError as exc:
            raise CliError(f"TLS to {self.host}:{self.port} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise CliError(f"cannot reach the appliance at {self.scheme}://{self.host}:{self.port}: "
                           f"{exc.strerror or exc} (is it running?)") from None
        finally:
            connection.close()

    def call(self, method: str, path: str, payload=None, body: bytes | None = None,
             content_type: str | None = None, ok=(200, 201, 204, 207)):
        """JSON in, JSON out; a non-2xx answer becomes a one-line CliError with the API's message."""
        if payload is not None:
            body, content_type = json.dumps(payload).encode(), "application/json"
        status, data = self.request(method, path, body, content_type)
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = None
        if status not in ok:
            message = None
            if isinstance(decoded, dict) and isinstance(decoded.get("error"), dict):
                message = decoded["error"].get("message")
            raise CliError(f"{method} {path} answered {status}: {message or data[:200].decode('utf-8', 'replace')}")
        return status, decoded if decoded is not None else data
