"""Hostile traffic against the real appliance process (real TLS, a real SQLite file), over HTTP/1.1 and
HTTP/2. After every case the process is alive, /healthz answers on a new connection, and the database
holds nothing the request was not entitled to write (a digest of every table, before and after).

Clients are independent of the server: httpx for HTTP/1.1, raw TLS sockets, and tests/support/h2_client.py
on h2 for HTTP/2 (httpx's HTTP/2 client cannot take RST_STREAM NO_ERROR mid-upload, docs/RELIABILITY.md).
One server per module, and a cleartext one (`[server] tls = false`) for the cases that differ."""

from __future__ import annotations

import plistlib
import socket
import ssl

import httpx
import pytest
import trio

from tests.support.device_sim import DeviceSim, client_context
from tests.support.h2_client import connect
from tests.support.harness import API_KEY
from tests.support.hostile import (AUTH, HostileServer, changed_tables, metric, start_hostile_server,
                                   table_digest)

KiB, MiB = 1024, 1024 * 1024
UDID = "HOSTILE-0001"  # enrolled at module start, so requests have state they could wrongly change
NO_ERROR, CANCEL = 0, 8  # RST_STREAM error codes (RFC 9113 §7)


def filler(size: int) -> bytes:
    return (b"\x00hostile\xff" * (size // 9 + 1))[:size]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    hostile = start_hostile_server(tmp_path_factory.mktemp("tls"))
    try:
        trio.run(_enroll, hostile)
        yield hostile
    finally:
        hostile.process.stop()


@pytest.fixture(scope="module")
def cleartext(tmp_path_factory):
    """`[server] tls = false`, as behind a TLS-terminating proxy: HTTP/1.1 and HTTP/2 (h2c)."""
    hostile = start_hostile_server(tmp_path_factory.mktemp("cleartext"), tls=False)
    try:
        yield hostile
    finally:
        hostile.process.stop()


@pytest.fixture(params=["tls", "cleartext"])
def listener(request) -> HostileServer:
    return request.getfixturevalue("server" if request.param == "tls" else "cleartext")


async def _enroll(hostile: HostileServer) -> None:
    cert, key = hostile.device_ca.issue(UDID, key_type="ec")
    async with DeviceSim(hostile.base_url, hostile.ssl_context(), cert, key, UDID) as device:
        await device.enroll()


def device_context(hostile: HostileServer) -> ssl.SSLContext:
    """A TLS context presenting the enrolled device's kind of identity (a certificate from the trusted CA)."""
    cert, key = hostile.device_ca.issue(UDID, key_type="ec")
    return client_context(hostile.data_dir / "ca.crt", cert, key)


def assert_unharmed(hostile: HostileServer, before: dict) -> None:
    assert hostile.alive(), hostile.log()[-3000:]
    changed = changed_tables(before, table_digest(hostile.db_path))
    assert not changed, f"tables changed that the request had no right to: {changed}"
    with httpx.Client(verify=hostile.ssl_context() or False, timeout=10) as client:
        assert client.get(hostile.base_url + "/healthz").status_code == 200


def scrape(hostile: HostileServer) -> str:
    with httpx.Client(verify=hostile.ssl_context() or False, timeout=10, headers=AUTH) as client:
        answer = client.get(hostile.base_url + "/metrics")
    assert answer.status_code == 200, answer.text
    return answer.text


def internal_errors(hostile: HostileServer) -> float:
    return metric(scrape(hostile), "mdm_connection_errors_total", reason="internal")


def h2(hostile: HostileServer, context: ssl.SSLContext | None = None):
    """An HTTP/2 connection to the server: ALPN h2 over TLS, or prior knowledge over cleartext."""
    return connect("127.0.0.1", hostile.port, (context or hostile.ssl_context()) if hostile.tls else None)


# --- the HTTP/2 early answer (hypercorn issue #329): one request used to end the process -------------------

async def test_h2_body_after_an_early_answer_leaves_the_server_and_other_connections_alone(listener):
    hostile = listener
    before = table_digest(hostile.db_path)
    async with h2(hostile) as bystander:
        assert (await bystander.request("GET", "/healthz")).status == 200
        async with h2(hostile) as client:
            # The exact trigger: a 70 KiB POST to an unknown path, answered 404 before its body is read.
            answer = await client.request("POST", "/nope", [("content-type", "application/octet-stream")],
                                          filler(70 * KiB))
            assert (answer.status, answer.ended) == (404, True)
            assert answer.reset_code in (None, NO_ERROR)  # at most "stop sending", never an error
            # A body far beyond the window: the client is told to stop with RST_STREAM NO_ERROR ...
            big = await client.start("POST", "/nope")
            sent = await client.send_body(big, filler(8 * MiB))
            await big.done.wait()
            assert (big.status, big.ended) == (404, True)
            with trio.fail_after(10):
                await big.reset.wait()
            assert big.reset_code == NO_ERROR and sent < 8 * MiB
            # ... and the connection's flow-control windows still move: a body on the same connection.
            again = await client.request("PUT", "/mdm/connect", [], filler(200 * KiB))
            assert again.status == 403 and again.ended  # no identity: refused, after the whole body
        assert (await bystander.request("GET", "/healthz")).status == 200
    assert_unharmed(hostile, before)
    assert internal_errors(hostile) == 0


# --- bodies of 16 KiB to 8 MiB to every route, with and without credentials --------------------------------

# (method, path, credentials: "device" TLS certificate, "api" key, "token" enrollment secret, or none).
ROUTES = [
    ("PUT", "/mdm/checkin", "device"), ("PUT", "/mdm/connect", "device"), ("POST", "/mdm/connect", "device"),
    ("POST", "/scep?operation=PKIOperation", None), ("GET", "/scep?operation=GetCACaps", None),
    ("POST", "/scep?operation=GetCACert", None), ("GET", "/mdm/enroll", "token"),
    ("PUT", f"/v1/enqueue/{UDID}", "api"), ("POST", "/v1/commands", "api"), ("GET", "/v1/devices", "api"),
    ("GET", f"/v1/devices/{UDID}", "api"), ("GET", f"/v1/devices/{UDID}/commands", "api"),
    ("DELETE", f"/v1/devices/{UDID}/queue", "api"), ("GET", "/v1/commands/NOPE", "api"),
    ("DELETE", "/v1/commands/NOPE", "api"), ("POST", "/v1/challenges", "api"), ("PUT", "/v1/pushcert", "api"),
    ("GET", "/v1/pushcert", "api"), ("POST", f"/v1/push/{UDID}", "api"), ("GET", "/v1/openapi.json", "api"),
    ("GET", "/metrics", "api"), ("GET", "/healthz", None), ("POST", "/nope", None), ("PUT", "/", None),
    ("DELETE", "/v1/nope", "api"), ("GET", "/ddm/assets/NOPE", "device"),
    ("PUT", "/api/v1/ddm/declarations", "api"), ("PUT", "/api/v1/ddm/set-declarations/NOPE", "api"),
    ("PUT", f"/api/v1/ddm/enrollment-sets/{UDID}", "api"), ("POST", "/api/v1/ddm/notify", "api"),
    ("PUT", "/api/v1/ddm/assets/hostile.asset", "api"), ("POST", "/api/v1/ddm/os-update", "api"),
    ("GET", "/api/v1/ddm/status-summary", "api"),
]
# What a route may change when it has credentials (whatever the body): minting a challenge is its job, a
# push records its outcome on the enrollment, and any bytes make an asset (stored with its declaration).
ENTITLED = {"/v1/challenges": frozenset({"scep_challenges"}), f"/v1/push/{UDID}": frozenset({"enrollments"}),
            "/api/v1/ddm/assets/hostile.asset": frozenset({"ddm_assets", "ddm_declarations"})}


# With the API key, a request that changed something (or succeeded at changing nothing, as clearing an empty
# queue does) leaves its row in the audit log; without credentials nothing may be written there either.
AUDITED = frozenset({"audit_log"})


def _target(path: str, credentials: str | None, with_credentials: bool) -> tuple[str, list[tuple[str, str]]]:
    if not with_credentials:
        return path, []
    if credentials == "api":
        return path, list(AUTH.items())
    if credentials == "token":
        return path + "?token=test-enroll-secret", []
    return path, []  # "device": the TLS client certificate; None: nothing to present


def _check_answer(path: str, status: int | None, text: str, with_credentials: bool) -> None:
    assert status is not None, f"{path}: no answer"
    if with_credentials and path.startswith("/v1/push/"):
        # NanoMDM's documented answer when no id could be pushed (no push certificate here): 500 with each
        # id's push_error. Kept for NanoMDM clients; the one 5xx a client can provoke (see RELIABILITY.md).
        assert status == 500 and "push_error" in text, (path, status, text)
        return
    assert status < 500, (path, status, text[:300])


@pytest.mark.parametrize("size", [16 * KiB, 70 * KiB, MiB, 8 * MiB], ids=["16KiB", "70KiB", "1MiB", "8MiB"])
@pytest.mark.parametrize("protocol", ["http1", "http2"])
async def test_bodies_to_every_route(server, protocol, size):
    body = filler(size)
    for with_credentials in (False, True):
        context = device_context(server) if with_credentials else server.ssl_context()
        async with httpx.AsyncClient(verify=context, timeout=30) as http1, h2(server, context) as http2:
            before = table_digest(server.db_path)
            for method, path, credentials in ROUTES:
                target, headers = _target(path, credentials, with_credentials)
                if protocol == "http1":
                    # httpx sends the whole body before reading: early answers must still reach it.
                    answer = await http1.request(method, server.base_url + target, headers=dict(headers),
                                                 content=body)
                    _check_answer(path, answer.status_code, answer.text, with_credentials)
                else:
                    headers.append(("content-length", str(size)))
                    exchange = await http2.request(method, target, headers, body)
                    assert exchange.ended and exchange.reset_code in (None, NO_ERROR), (path, exchange)
                    _check_answer(path, exchange.status, exchange.body.decode("latin-1"), with_credentials)
                assert server.alive()
                after = table_digest(server.db_path)
                entitled = ENTITLED.get(path, frozenset()) if with_credentials else frozenset()
                if with_credentials and credentials == "api":
                    entitled |= AUDITED  # an API change that succeeded is recorded (appliance/web/audit_api.py)
                assert changed_tables(before, after) <= entitled, (method, path)
                before = after
    assert_unharmed(server, before)


async def test_early_answers_over_cleartext_http1_reach_the_client(cleartext):
    before = table_digest(cleartext.db_path)
    async with httpx.AsyncClient(timeout=30) as http:
        for path in ("/nope", "/mdm/checkin", "/v1/devices"):
            answer = await http.put(cleartext.base_url + path, content=filler(8 * MiB))
            assert 400 <= answer.status_code < 500, (path, answer.status_code)
        assert (await http.get(cleartext.base_url + "/healthz")).status_code == 200  # same connection
    assert_unharmed(cleartext, before)


# --- a stream reset and a connection dropped mid-body -------------------------------------------------

def enqueue_plist(command_uuid: str, size: int) -> bytes:
    """A valid command plist of about `size` bytes (the padding is a key Apple ignores)."""
    command = {"RequestType": "DeviceInformation", "Queries": ["UDID"], "Padding": "p" * size}
    return plistlib.dumps({"CommandUUID": command_uuid, "Command": command})


async def test_h2_stream_reset_mid_body_stores_nothing(server):
    body = enqueue_plist("HOSTILE-RESET-1", 300 * KiB)
    headers = [*AUTH.items(), ("content-length", str(len(body)))]
    before = table_digest(server.db_path)
    async with h2(server) as client:
        exchange = await client.start("PUT", f"/v1/enqueue/{UDID}", headers)
        await client.send_body(exchange, body[:len(body) // 2], end_stream=False)
        await client.reset(exchange, CANCEL)
        assert (await client.request("GET", "/healthz")).status == 200  # the connection goes on
        assert_unharmed(server, before)
        # The same request sent whole is stored: the check above can see a write.
        whole = await client.request("PUT", f"/v1/enqueue/{UDID}?nopush=1", headers, body)
        assert whole.status == 200, bytes(whole.body)
    assert {"commands", "queue"} <= changed_tables(before, table_digest(server.db_path))


async def test_connection_dropped_mid_body_stores_nothing(server):
    body = enqueue_plist("HOSTILE-DROP-1", 300 * KiB)
    before = table_digest(server.db_path)
    # HTTP/1.1: headers and half the body, then the TCP connection is reset (SO_LINGER 0).
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", server.port, ssl_context=server.ssl_context(),
                                                 https_compatible=True)
    head = (f"PUT /v1/enqueue/{UDID} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    await stream.send_all(head + body[:len(body) // 2])
    stream.transport_stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await trio.aclose_forcefully(stream)
    # HTTP/2: half the body, then the connection is gone.
    async with h2(server) as client:
        headers = [*AUTH.items(), ("content-length", str(len(body)))]
        exchange = await client.start("PUT", f"/v1/enqueue/{UDID}", headers)
        await client.send_body(exchange, body[:len(body) // 2], end_stream=False)
        await trio.aclose_forcefully(client.stream)
    assert_unharmed(server, before)


# --- many streams, slow bodies, big headers, malformed framing, idle connections ------------------------

async def test_300_concurrent_streams_on_one_h2_connection(server):
    before = table_digest(server.db_path)
    # Within the server's advertised limit (SETTINGS_MAX_CONCURRENT_STREAMS, 100): all 300 answered.
    async with h2(server) as client:
        limit = trio.Semaphore(client.conn.remote_settings.max_concurrent_streams)
        exchanges = []

        async def get() -> None:
            async with limit:
                exchanges.append(await client.request("GET", "/healthz"))

        async with trio.open_nursery() as nursery:
            for _ in range(300):
                nursery.start_soon(get)
    assert [(e.status, e.ended) for e in exchanges] == [(200, True)] * 300
    # Beyond it, all at once: the server ends that connection (GOAWAY) and nothing else.
    async with h2(server) as client:
        client.ignore_stream_limit()
        exchanges = [await client.start("GET", "/healthz", end_stream=True) for _ in range(300)]
        with trio.fail_after(30):
            await client.closed.wait()
        # GOAWAY PROTOCOL_ERROR (unless the close overtook it), after at most the first 100 answers.
        assert client.goaway is None or client.goaway.error_code == 1
        assert {e.status for e in exchanges} <= {None, 200} and sum(e.ended for e in exchanges) <= 100
    assert_unharmed(server, before)


@pytest.mark.parametrize("protocol", ["http1", "http2"])
async def test_a_1_byte_per_second_body_does_not_hold_up_others(server, protocol):
    before = table_digest(server.db_path)
    trickling, stopped = trio.Event(), trio.Event()

    async def trickle(send_byte) -> None:
        for _ in range(60):  # a minute at most; cancelled once the others are answered
            await send_byte()
            if not trickling.is_set():
                await trio.sleep(1)
                trickling.set()  # two bytes sent, a second apart: mid-body
            else:
                await trio.sleep(1)
        stopped.set()

    async with trio.open_nursery() as nursery, h2(server) as slow_h2:
        if protocol == "http1":
            slow = await trio.open_ssl_over_tcp_stream("127.0.0.1", server.port, ssl_context=server.ssl_context(),
                                                       https_compatible=True)
            await slow.send_all(b"PUT /mdm/connect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 60\r\n\r\n")
            nursery.start_soon(trickle, lambda: slow.send_all(b"x"))
        else:
            exchange = await slow_h2.start("PUT", "/mdm/connect", [("content-length", "60")])
            nursery.start_soon(trickle, lambda: slow_h2.send_body(exchange, b"x", end_stream=False))
        await trickling.wait()
        with trio.fail_after(20):  # a hang guard, not a speed check
            async with httpx.AsyncClient(verify=server.ssl_context(), timeout=20) as http:
                for _ in range(10):
                    assert (await http.get(server.base_url + "/healthz")).status_code == 200
            async with h2(server) as other:
                for _ in range(10):
                    assert (await other.request("GET", "/healthz")).status == 200
            for _ in range(5):  # other streams on the slow body's own connection
                assert (await slow_h2.request("GET", "/healthz")).status == 200
        assert not stopped.is_set()  # all of that while the slow body was still arriving
        nursery.cancel_scope.cancel()
    if protocol == "http1":
        await trio.aclose_forcefully(slow)
    assert_unharmed(server, before)


async def _raw_http1(hostile: HostileServer, request: bytes) -> bytes:
    """Send bytes as they are over TLS; the status line of the answer (b"" if the server just closed)."""
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", hostile.port, ssl_context=hostile.ssl_context(),
                                                 https_compatible=True)
    async with stream:
        await stream.send_all(request)
        answer = b""
        with trio.fail_after(10):
            while b"\r\n" not in answer:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                answer += chunk
    return answer.split(b"\r\n", 1)[0]


async def test_a_64_kib_header_line(server):
    before = table_digest(server.db_path)
    filler_header = "x" * (64 * KiB)
    # HTTP/1.1: within the 1 MiB a request head may have (integrators' long enqueue URLs).
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: {filler_header}\r\n\r\n".encode()
    assert await _raw_http1(server, request) == b"HTTP/1.1 200 "
    # HTTP/2: over the advertised SETTINGS_MAX_HEADER_LIST_SIZE (64 KiB): h2 ends that connection with
    # ENHANCE_YOUR_CALM; the server and other connections carry on.
    async with h2(server) as client:
        exchange = await client.start("GET", "/healthz", [("x-filler", filler_header)], end_stream=True)
        with trio.fail_after(10):
            await client.closed.wait()
        assert exchange.status is None and client.goaway is not None and client.goaway.error_code == 11
    async with h2(server) as client:
        assert (await client.request("GET", "/healthz", [("x-filler", "x" * 60 * KiB)])).status == 200
    assert_unharmed(server, before)


CHUNKED_BODIES = {
    "size not hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "size overflows": b"fffffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "data longer than its size": b"5\r\nhello, world\r\n0\r\n\r\n",
    "no CRLF after the data": b"5\r\nhelloXX0\r\n\r\n",
    "negative size": b"-5\r\nhello\r\n0\r\n\r\n",
    "control byte in an extension": b"5;\x01\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("path", [f"/v1/enqueue/{UDID}", "/mdm/connect"])
async def test_malformed_chunked_encoding_is_a_4xx_and_stores_nothing(server, path):
    before = table_digest(server.db_path)
    head = (f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    for name, body in CHUNKED_BODIES.items():
        assert (await _raw_http1(server, head + body)).startswith(b"HTTP/1.1 4"), name
    # A chunk cut short by the client hanging up: nothing to answer, nothing stored.
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", server.port, ssl_context=server.ssl_context(),
                                                 https_compatible=True)
    await stream.send_all(head + b"400\r\nhello")
    await stream.aclose()
    # Framing HTTP/1.1 does not allow: a transfer coding other than chunked (h11 hints 501), and
    # Transfer-Encoding with Content-Length.
    for framing in (b"Transfer-Encoding: gzip, chunked\r\n", b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"):
        request = (f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + framing + b"\r\n5\r\nhello\r\n0\r\n\r\n")
        assert (await _raw_http1(server, request)).startswith(b"HTTP/1.1 4"), framing
    assert_unharmed(server, before)


async def test_websocket_handshakes_are_refused_with_a_4xx(server):
    request = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert await _raw_http1(server, request) == b"HTTP/1.1 400 "
    async with h2(server) as client:  # RFC 8441 extended CONNECT
        exchange = await client.request("CONNECT", "/mdm/connect", [(":protocol", "websocket"),
                                                                    ("sec-websocket-version", "13")])
        assert exchange.status == 400 and b"WebSocket" in exchange.body


async def test_300_idle_connections_while_healthz_answers(server):
    before = table_digest(server.db_path)
    handshake_errors = metric(scrape(server), "mdm_connection_errors_total", reason="tls_handshake")
    idle: list[trio.abc.Stream] = []
    try:
        for n in range(300):
            if n % 5 == 0:  # some finish the TLS handshake and then say nothing ...
                stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", server.port), server.ssl_context(),
                                        server_hostname="127.0.0.1", https_compatible=True)
                await stream.do_handshake()
            else:  # ... most never start it
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            idle.append(stream)
        async with httpx.AsyncClient(verify=server.ssl_context(), timeout=20) as http:
            assert (await http.get(server.base_url + "/healthz")).status_code == 200
        async with h2(server) as client:
            assert (await client.request("GET", "/healthz")).status == 200
    finally:
        for stream in idle:
            await trio.aclose_forcefully(stream)
    # The 240 that never started their handshake count as such; none was an internal error.
    with trio.fail_after(20):
        while True:
            text = scrape(server)
            if metric(text, "mdm_connection_errors_total", reason="tls_handshake") >= handshake_errors + 240:
                break
            await trio.sleep(0.1)
    assert metric(text, "mdm_connection_errors_total", reason="internal") == 0
    assert_unharmed(server, before)
