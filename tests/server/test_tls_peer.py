"""The hypercorn hook: real mTLS requests on loopback whose handler echoes the client certificate, and
connection errors kept to their connection.

These fail when a hypercorn upgrade stops the certificate reaching the scope or an error escaping.
"""

import datetime as dt
import hashlib
import ipaddress
import logging
import socket
import ssl

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
import hypercorn.protocol
import hypercorn.trio.run
import hypercorn.trio.tcp_server
from hypercorn.config import Config
from hypercorn.protocol.h2 import H2Protocol

from appliance.web import early_answer, tls_peer
from tests.support.h2_client import connect
from tests.support.identity_pki import NOW, Identity, issue, make_ca, new_key


async def echo_app(scope, receive, send):
    """Plain ASGI: answers the SHA-256 of the client certificate DER the scope carries."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    tls = scope["extensions"].get("tls")
    if tls is None:
        answer = "no-tls"
    elif tls["client_cert_der"] is None:
        answer = "none"
    else:
        assert tls["client_cert_chain"][0].startswith("-----BEGIN CERTIFICATE-----")
        answer = f"{hashlib.sha256(tls['client_cert_der']).hexdigest()} {tls['tls_version']:#06x}"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": answer.encode()})


def server_identity(ca: Identity) -> Identity:
    key = new_key("ec")
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=127.0.0.1"))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(ca.key, hashes.SHA256())
    )
    return Identity(key, cert)


@pytest.fixture(scope="module")
def pki():
    server_ca = make_ca("TLS Server CA", "ec")
    device_ca = make_ca("Device CA")
    return {
        "server_ca": server_ca,
        "server": server_identity(server_ca),
        "device_ca": device_ca,
        "device": issue(device_ca, "device"),
        "ec_device": issue(device_ca, "ec-device", "ec"),
        "expired": issue(device_ca, "expired", not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1)),
        "stranger": issue(make_ca("Stranger CA"), "stranger"),
    }


@pytest.fixture
async def server(nursery, pki, tmp_path):
    (tmp_path / "server.pem").write_bytes(pki["server"].pem)
    (tmp_path / "server.key").write_bytes(pki["server"].key_pem)
    (tmp_path / "client-cas.pem").write_bytes(pki["device_ca"].pem)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.insecure_bind = ["127.0.0.1:0"]
    config.certfile = str(tmp_path / "server.pem")
    config.keyfile = str(tmp_path / "server.key")
    config.accesslog = None
    config.ssl_handshake_timeout = 1
    tls_peer.request_client_certificates(config, tmp_path / "client-cas.pem")
    stop = trio.Event()
    errors: list[str] = []
    binds = await nursery.start(lambda task_status: tls_peer.serve(
        echo_app, config, shutdown_trigger=stop.wait, count_connection_error=errors.append, task_status=task_status))
    yield {"https": next(b for b in binds if b.startswith("https://")), "http": next(b for b in binds if b.startswith("http://")),
           "errors": errors}
    stop.set()


def client(pki, tmp_path, identity: Identity | None = None, *, http2: bool = False) -> httpx.AsyncClient:
    context = ssl.create_default_context(cadata=pki["server_ca"].pem.decode())
    if identity is not None:
        (tmp_path / "client.pem").write_bytes(identity.pem + identity.key_pem)
        context.load_cert_chain(tmp_path / "client.pem")
    return httpx.AsyncClient(verify=context, http2=http2)


def fingerprint(identity: Identity) -> str:
    return hashlib.sha256(identity.der).hexdigest()


async def test_serve_reports_bound_addresses(server):
    assert server["https"].startswith("https://127.0.0.1:")
    assert int(server["https"].rsplit(":", 1)[1]) > 0


@pytest.mark.parametrize("name", ["device", "ec_device"])
async def test_client_certificate_reaches_the_app_http11(server, pki, tmp_path, name):
    async with client(pki, tmp_path, pki[name]) as http:
        for _ in range(3):  # keep-alive: every request on the connection carries it
            answer = await http.get(server["https"] + "/")
            assert answer.http_version == "HTTP/1.1"
            assert answer.text.split()[0] == fingerprint(pki[name])


async def test_client_certificate_reaches_the_app_http2(server, pki, tmp_path):
    async with client(pki, tmp_path, pki["device"], http2=True) as http:
        answers = [await http.get(server["https"] + f"/{n}") for n in range(2)]
    assert {a.http_version for a in answers} == {"HTTP/2"}
    assert {a.text.split()[0] for a in answers} == {fingerprint(pki["device"])}


async def test_tls_version_reported(server, pki, tmp_path):
    async with client(pki, tmp_path, pki["device"]) as http:
        answer = await http.get(server["https"] + "/")
    assert answer.text.split()[1] in ("0x0303", "0x0304")


async def test_no_client_certificate_is_none(server, pki, tmp_path):
    async with client(pki, tmp_path) as http:
        answer = await http.get(server["https"] + "/")
    assert answer.text == "none"


async def test_plain_http_has_no_tls_extension(server, pki, tmp_path):
    async with httpx.AsyncClient() as http:
        answer = await http.get(server["http"] + "/")
    assert answer.text == "no-tls"


async def test_expired_certificate_is_left_to_the_trust_check(server, pki, tmp_path):
    # The handshake ignores dates so the identity layer can answer a clear 403 (with skew).
    async with client(pki, tmp_path, pki["expired"]) as http:
        answer = await http.get(server["https"] + "/")
    assert answer.text.split()[0] == fingerprint(pki["expired"])


async def test_certificate_from_unknown_ca_fails_the_handshake(server, pki, tmp_path):
    async with client(pki, tmp_path, pki["stranger"]) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(server["https"] + "/")
    with trio.fail_after(5):  # counted once the server side of the handshake has failed too
        while server["errors"] != ["tls_handshake"]:
            await trio.sleep(0.01)


async def test_connections_before_and_after_still_work(server, pki, tmp_path):
    # A failed handshake must not disturb the listener.
    async with client(pki, tmp_path, pki["stranger"]) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(server["https"] + "/")
    async with client(pki, tmp_path, pki["device"]) as http:
        answer = await http.get(server["https"] + "/")
    assert answer.text.split()[0] == fingerprint(pki["device"])


def test_hook_refuses_other_hypercorn_versions(monkeypatch):
    monkeypatch.setattr(tls_peer.importlib.metadata, "version", lambda name: "0.19.0")
    with pytest.raises(RuntimeError, match="0.18"):
        tls_peer.install_hook()


def _get_over_ssl_socket(port: int, context: ssl.SSLContext, session):
    """One `Connection: close` request on a blocking TLS socket; (reused?, body, session)."""
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                try:
                    chunk = tls.recv(65536)
                except ssl.SSLEOFError:  # hypercorn closes without close_notify
                    break
                if not chunk:
                    break
                data += chunk
            return tls.session_reused, data, tls.session


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_resumed_sessions_keep_the_client_certificate(server, pki, tmp_path, version):
    # Devices reconnect with TLS session resumption; the certificate must still reach the app.
    context = ssl.create_default_context(cadata=pki["server_ca"].pem.decode())
    (tmp_path / "client.pem").write_bytes(pki["device"].pem + pki["device"].key_pem)
    context.load_cert_chain(tmp_path / "client.pem")
    context.maximum_version = version
    port = int(server["https"].rsplit(":", 1)[1])
    session = None
    reused = []
    for _ in range(3):
        was_reused, data, session = await trio.to_thread.run_sync(_get_over_ssl_socket, port, context, session)
        reused.append(was_reused)
        assert fingerprint(pki["device"]).encode() in data
    assert reused == [False, True, True]


async def test_stalled_handshake_is_closed(server):
    # The hook finishes the handshake itself, so it must also enforce hypercorn's handshake timeout.
    port = int(server["https"].rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        with trio.fail_after(5):
            assert await stream.receive_some(1024) == b""


def test_install_hook_puts_in_every_replacement():
    tls_peer.install_hook()
    assert hypercorn.trio.run.TCPServer.__module__ == "appliance.web.tls_peer"
    assert hypercorn.protocol.H2Protocol is early_answer.EarlyAnswerH2
    assert hypercorn.protocol.H11Protocol is early_answer.EarlyAnswerH11
    assert hypercorn.trio.tcp_server.TaskGroup is early_answer.AppTaskGroup


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_an_error_escaping_a_connection_ends_only_that_connection(server, pki, monkeypatch):
    """hypercorn's own HTTP/2 event handling (without appliance.web.early_answer) raises KeyError on DATA
    for a stream it has answered: the connection ends, counted and logged once, and nothing else does."""
    monkeypatch.setattr(early_answer.EarlyAnswerH2, "_handle_events", H2Protocol._handle_events)
    lines = _Lines()
    logging.getLogger("appliance.connection").addHandler(lines)
    context = ssl.create_default_context(cadata=pki["server_ca"].pem.decode())
    port = int(server["https"].rsplit(":", 1)[1])
    try:
        async with connect("127.0.0.1", port, context) as bystander:
            assert (await bystander.request("GET", "/before")).status == 200
            async with connect("127.0.0.1", port, context) as doomed:
                exchange = await doomed.start("POST", "/early")
                await doomed.send_body(exchange, b"x" * 70 * 1024)
                with trio.fail_after(10):
                    await doomed.closed.wait()
            assert (await bystander.request("GET", "/after")).status == 200
    finally:
        logging.getLogger("appliance.connection").removeHandler(lines)
    assert server["errors"] == ["internal"]
    [record] = lines.records
    assert record.getMessage() == "connection_failed" and record.fields["reason"] == "internal"
    assert "KeyError" in record.fields["error"] and record.fields["at"].startswith("hypercorn/protocol/h2.py:")
