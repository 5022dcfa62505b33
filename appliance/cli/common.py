"""What every command shares: the --config option, one-line failures, the admin API client, and the
choice every command that touches state makes: through the running server's API when one serves this
config, else on the database itself, which the CLI never creates or migrates (only `serve` does) and
whose locks it waits for only so long."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import sqlite3
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import click

from appliance.bootstrap import DB_FILE, read_api_key
from appliance.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, Config, ConfigError, load_config, parse_listen

PROBE_SECONDS = 3.0  # how long /healthz may take to say a server is there
LOCK_WAIT_SECONDS = 5.0  # the longest the CLI waits for the database's write lock (the server's commits take ms)

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
        self.named = bool(url)  # the operator named a server: no falling back to data_dir
        self.api_key = api_key or os.environ.get("MDM_APPLIANCE_API_KEY") or read_api_key(config)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

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

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "https":
            context, server_name = self._ssl_context(), self.server_name

            class Verified(http.client.HTTPSConnection):
                def connect(self) -> None:  # SNI and verification name may differ from the address
                    sock = socket.create_connection((self.host, self.port), self.timeout)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.sock = context.wrap_socket(sock, server_hostname=server_name)

            return Verified(self.host, self.port, timeout=timeout, context=context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _exchange(self, method: str, path: str, body: bytes | None, headers: dict,
                  timeout: float) -> tuple[int, bytes]:
        connection = self._connection(timeout)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            self.last_headers = response.getheaders()  # e.g. the DDM API's Warning headers
            return response.status, response.read()
        finally:
            connection.close()

    def probe(self) -> dict | None:
        """The server's /healthz answer if an appliance answers within PROBE_SECONDS, else None."""
        try:
            _, data = self._exchange("GET", "/healthz", None, {}, PROBE_SECONDS)
            answer = json.loads(data)
        except (OSError, http.client.HTTPException, ValueError):
            return None
        return answer if isinstance(answer, dict) and "status" in answer and "version" in answer else None

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str | None = None) -> tuple[int, bytes]:
        if not self.api_key:
            raise CliError(
                f"no API key: set [api] key, or run this where {self.config.data_dir}/api.key is readable"
            )
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            return self._exchange(method, path, body, headers, self.timeout)
        except ssl.SSLError as exc:
            raise CliError(f"TLS to {self.host}:{self.port} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise CliError(f"cannot reach the appliance at {self.url}: "
                           f"{exc.strerror or exc} (is it running?)") from None
        except http.client.HTTPException as exc:
            raise CliError(f"the appliance at {self.url} broke off its answer: {exc!r}") from None

    def call(self, method: str, path: str, payload=None, body: bytes | None = None,
             content_type: str | None = None, ok=(200, 201, 204, 207), raw: bool = False):
        """JSON in, JSON out (raw: the answer's bytes as they are); a non-2xx answer becomes a one-line
        CliError with the API's message."""
        if payload is not None:
            body, content_type = json.dumps(payload).encode(), "application/json"
        status, data = self.request(method, path, body, content_type)
        if raw and status in ok:
            return status, data
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = None
        if status not in ok:
            message, code = None, None
            if isinstance(decoded, dict) and isinstance(decoded.get("error"), dict):
                message, code = decoded["error"].get("message"), decoded["error"].get("code")
            if status == 404 and code == "not_found":  # no such route, not a missing thing
                message = (f"{message} (the server does not know this request: an older mdm-appliance? "
                           "restart it after an upgrade)")
            raise CliError(f"{method} {path} answered {status}: {message or data[:200].decode('utf-8', 'replace')}")
        return status, decoded if decoded is not None else data


def serving_api(config: Config) -> ApiClient | None:
    """The admin API of the server serving this config, or None when none does (the command then works
    on data_dir itself). A server counts when its /healthz answers on the configured local listener and
    names the CA of this data_dir; $MDM_APPLIANCE_URL names a server, which is then always used."""
    client = ApiClient(config)
    if client.named:
        return client
    if (client.scheme == "https" and config.server.tls_cert is None and "MDM_APPLIANCE_CA" not in os.environ
            and not (config.data_dir / "ca.crt").exists()):
        return None  # a server writes its CA before it listens: none has started on this data_dir
    health = client.probe()
    if health is None:
        return None
    ours, theirs = _ca_fingerprint(config), health.get("ca_sha256")
    if ours is not None and theirs is not None and ours != theirs:
        click.echo(f"note: the appliance at {client.url} has another CA than {config.data_dir}: "
                   "working on data_dir directly", err=True)
        return None
    return client


def _ca_fingerprint(config: Config) -> str | None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        certificate = x509.load_pem_x509_certificate((config.data_dir / "ca.crt").read_bytes())
    except (OSError, ValueError):
        return None
    return certificate.fingerprint(hashes.SHA256()).hex()


@contextlib.contextmanager
def database(config: Config) -> Iterator[sqlite3.Connection]:
    """The appliance database, for commands that work on it themselves (no server serves this config,
    or a backup). Never created and never migrated here: a database at another schema is refused in
    one line, unchanged. Every lock wait ends after LOCK_WAIT_SECONDS. Write with `transaction(conn)`."""
    from appliance.store import schema
    from appliance.store.db import connect_sync

    path = config.data_dir / DB_FILE
    if not path.exists():
        raise CliError(f"no database at {path}: start the server once (`mdm-appliance serve`) so that it "
                       "creates it")
    try:
        conn = connect_sync(path, config.storage.synchronous, migrate=False,
                            busy_timeout=LOCK_WAIT_SECONDS, create=False)
    except sqlite3.Error as exc:
        raise database_error(path, exc) from None
    try:
        schema.require_current(conn)
        yield conn
    except schema.SchemaMismatch as exc:
        raise CliError(str(exc)) from None
    except sqlite3.Error as exc:
        raise database_error(path, exc) from None
    finally:
        conn.close()


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (BEGIN IMMEDIATE: its lock wait is bounded by the busy timeout), committed
    unless an exception leaves the block."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def database_error(path: Path, exc: sqlite3.Error) -> CliError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return CliError(f"the database {path} is busy: another process held its lock for over "
                        f"{LOCK_WAIT_SECONDS:g} s (a server that did not answer, or another mdm-appliance "
                        "command?); nothing was changed, try again")
    if "unable to open" in text:
        return CliError(f"cannot open the database {path}: {text} (run as the service user: "
                        "sudo -u mdm-appliance mdm-appliance ...)")
    return CliError(f"the database {path}: {text}")
