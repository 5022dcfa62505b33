"""The APNs client against a real local HTTP/2 TLS stand-in that requires a client certificate."""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager

import pytest
import trio

from appliance.push.apns import APNsClient, PushStatus
from appliance.push.pushcert import load_pem
from tests.support.apns_certs import make_ca, make_push_cert, make_server
from tests.support.apns_standin import Answer, StandIn
from tests.support.project import pyproject_version


class LogRecorder:
    def __init__(self):
        self.lines: list[tuple[str, str, dict]] = []

    def _add(level):
        def log(self, event, **fields):
            self.lines.append((level, event, fields))
        return log

    info = _add("info")
    warning = _add("warning")
    error = _add("error")
    debug = _add("debug")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    server_ca = make_ca("Stand-in server CA")
    server = make_server(server_ca)
    push_ca = make_ca("Stand-in Apple push CA")
    ca_file = tmp_path_factory.mktemp("apns") / "server-ca.pem"
    ca_file.write_bytes(server_ca.cert_pem)
    return {"server": server, "push_ca": push_ca, "ca_file": ca_file,
            "push": make_push_cert(push_ca)}


def push_cert(identity):
    return load_pem(identity.cert_pem, identity.key_pem)


@asynccontextmanager
async def running(pki, standin_kw=None, **client_kw):
    standin = StandIn.create(pki["server"].cert_pem, pki["server"].key_pem,
                             pki["push_ca"].cert_pem, **(standin_kw or {}))
    log = LogRecorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(standin.serve)
        client_kw.setdefault("certificate", push_cert(pki["push"]))
        client = APNsClient(standin.url, ca_file=pki["ca_file"], log=log, **client_kw)
        await nursery.start(client.run)
        yield standin, client, log
        nursery.cancel_scope.cancel()


def tokens(n, prefix="ab"):
    return [f"{prefix}{i:062x}" for i in range(n)]


async def test_request_headers_and_body_are_exactly_apples(pki):
    async with running(pki, expiration=7200) as (standin, client, _):
        before = int(time.time())
        result = await client.push(bytes.fromhex("0a" * 32), "PUSH-MAGIC-1")
    assert result.status is PushStatus.OK and result.apns_id
    [req] = standin.requests
    h = req.headers
    assert h[":method"] == "POST" and h[":scheme"] == "https"
    assert h[":path"] == "/3/device/" + "0a" * 32
    assert h["apns-topic"] == client.certificate.topic.strip()
    assert h["apns-topic"].startswith("com.apple.mgmt.External.")
    assert h["apns-push-type"] == "mdm"
    assert h["apns-priority"] == "10"
    assert h["user-agent"] == f"mdm-appliance/{pyproject_version()}"
    assert before + 7200 <= int(h["apns-expiration"]) <= int(time.time()) + 7201
    assert req.body == b'{"mdm":"PUSH-MAGIC-1"}'
    assert json.loads(req.body) == {"mdm": "PUSH-MAGIC-1"}
    assert req.client_cert == pki["push"].der


async def test_each_error_answer_maps_to_its_result(pki):
    t = tokens(7)
    answers = {
        t[0]: Answer(410, "Unregistered", 1700000000123),
        t[1]: Answer(400, "BadDeviceToken"),
        t[2]: Answer(400, "DeviceTokenNotForTopic"),
        t[3]: Answer(403, "BadCertificate"),
        t[4]: Answer(429, "TooManyRequests"),
        t[5]: Answer(500, "InternalServerError"),
        t[6]: Answer(503, "ServiceUnavailable"),
    }
    async with running(pki, {"answers": answers}, backoff_initial=0.01, max_attempts=3) as (
            standin, client, log):
        results = await client.push_many([(tok, "m") for tok in t])
        again = await client.push(t[4], "m")  # the throttled token is not sent again at once
    r = dict(zip(t, results))
    assert r[t[0]].status is PushStatus.UNREGISTERED and r[t[0]].timestamp == 1700000000123
    assert (r[t[1]].status, r[t[1]].http_status, r[t[1]].reason) == (
        PushStatus.REJECTED, 400, "BadDeviceToken")
    assert r[t[2]].reason == "DeviceTokenNotForTopic" and r[t[2]].status is PushStatus.REJECTED
    assert r[t[3]].status is PushStatus.CERTIFICATE and client.cert_error == "BadCertificate"
    assert [ln for ln in log.lines if ln[1] == "apns_certificate_rejected"]
    assert r[t[4]].status is PushStatus.THROTTLED and r[t[4]].retry_after > 0
    assert again.status is PushStatus.THROTTLED
    assert standin.tokens().count(t[4]) == 1
    for tok, code in ((t[5], 500), (t[6], 503)):
        assert (r[tok].status, r[tok].http_status) == (PushStatus.FAILED, code)
        assert standin.tokens().count(tok) == 3  # bounded retries
    for tok in t[:4]:
        assert standin.tokens().count(tok) == 1  # final answers are never retried


async def test_a_200_clears_the_certificate_error(pki):
    t = tokens(2)
    async with running(pki, {"answers": {t[0]: Answer(403, "BadCertificate")}}) as (_, client, _l):
        await client.push(t[0], "m")
        assert client.cert_error == "BadCertificate"
        assert (await client.push(t[1], "m")).ok
        assert client.cert_error is None


async def test_goaway_mid_burst_loses_nothing_and_repeats_nothing(pki):
    t = tokens(400)
    async with running(pki, {"goaway_after": 60}) as (standin, client, log):
        results = await client.push_many([(tok, "m") for tok in t])
    assert all(r.ok for r in results)
    assert sorted(standin.tokens()) == sorted(t)  # each processed exactly once
    assert standin.ignored, "the burst should have had streams above last-stream-id"
    assert standin.connections == 2
    assert [ln for ln in log.lines if ln[1] == "apns_goaway"][0][2]["reason"] == "Shutdown"


async def test_streams_below_goaway_are_answered_after_it(pki):
    t = tokens(30)
    async with running(pki, {"goaway_after": 5, "delay": 0.2}) as (standin, client, _):
        results = await client.push_many([(tok, "m") for tok in t])
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    assert sorted(standin.tokens()) == sorted(t)
    first_conn = [r for r in standin.requests if r.connection == 1]
    assert len(first_conn) >= 5  # answered after the GOAWAY went out, on the old connection


async def test_dropped_connection_resends_unanswered(pki):
    t = tokens(200)
    async with running(pki, {"drop_after": 40}, backoff_initial=0.01) as (standin, client, _):
        results = await client.push_many([(tok, "m") for tok in t])
    assert all(r.ok for r in results)
    assert set(standin.tokens()) == set(t)
    assert standin.connections == 2


async def test_max_concurrent_streams_one(pki):
    t = tokens(15)
    async with running(pki, {"max_streams": 1, "delay": 0.01}) as (standin, client, _):
        results = await client.push_many([(tok, "m") for tok in t])
    assert all(r.ok for r in results)
    assert standin.max_open_seen == 1
    assert standin.connections == 1


async def held_burst(pki, n, standin_kw, **client_kw):
    """Send n pushes while the stand-in holds every answer; returns the most streams open at once."""
    hold = trio.Event()
    async with running(pki, {"hold": hold, **standin_kw}, **client_kw) as (standin, client, _):
        async with trio.open_nursery() as nursery:
            outcome = {}

            async def burst():
                outcome["results"] = await client.push_many([(tok, "m") for tok in tokens(n)])

            nursery.start_soon(burst)
            seen = -1
            while seen != standin.max_open_seen or seen == 0:  # until no more streams open
                seen = standin.max_open_seen
                await trio.sleep(0.3)
            hold.set()
    assert all(r.ok for r in outcome["results"])
    return standin.max_open_seen


async def test_max_concurrent_streams_thousand_within_own_cap(pki):
    # our own cap (100) wins: h2's send_headers slows down with many open streams
    assert await held_burst(pki, 1200, {"max_streams": 1000}) == 100
    # with a higher own cap, the server's 1000 is the limit
    assert await held_burst(pki, 1200, {"max_streams": 1000}, max_streams=2000) == 1000


async def test_max_streams_dropping_to_one_mid_connection_is_honored(pki):
    t = tokens(300)
    async with running(pki, {"max_streams": 100, "delay": 0.05}) as (standin, client, _):
        async with trio.open_nursery() as nursery:
            outcome = {}

            async def burst():
                outcome["results"] = await client.push_many([(tok, "m") for tok in t])

            nursery.start_soon(burst)
            while len(standin.requests) < 50:
                await trio.sleep(0.01)
            await standin.set_max_streams(1)
            standin.delay = 0.002
    # the stand-in's h2 kills the connection if a stream beyond the acknowledged limit is opened
    assert all(r.ok for r in outcome["results"])
    assert standin.connections == 1
    assert sorted(standin.tokens()) == sorted(t)


async def test_certificate_swap_reconnects_with_new_identity(pki):
    second = make_push_cert(pki["push_ca"])
    async with running(pki) as (standin, client, _):
        assert (await client.push("aa" * 32, "m")).ok
        client.set_certificate(push_cert(second))
        assert (await client.push("bb" * 32, "m")).ok
    first_req, second_req = standin.requests
    assert first_req.client_cert == pki["push"].der
    assert second_req.client_cert == second.der
    assert second_req.headers["apns-topic"] == push_cert(second).topic
    assert standin.connections == 2


async def test_timeout_is_retried_then_fails_and_resets_the_stream(pki):
    async with running(pki, {"delay": 3}, timeout=0.3, max_attempts=2, backoff_initial=0.05) as (
            standin, client, _):
        start = trio.current_time()
        result = await client.push("cc" * 32, "m")
        assert trio.current_time() - start < 1.5
        await trio.sleep(0.1)
        assert standin.open_streams() == 0  # both streams were reset (RST_STREAM CANCEL)
    assert result.status is PushStatus.FAILED and result.reason == "Timeout"
    assert standin.tokens() == ["cc" * 32] * 2


async def test_small_server_window_splits_body(pki):
    async with running(pki, {"initial_window": 7}) as (standin, client, _):
        results = await client.push_many([(tok, "MAGIC-0123456789") for tok in tokens(5)])
    assert all(r.ok for r in results)
    assert {r.body for r in standin.requests} == {b'{"mdm":"MAGIC-0123456789"}'}


async def test_error_bodies_beyond_64k_do_not_stall(pki):
    t = tokens(2500)
    answers = {tok: Answer(400, "BadDeviceToken") for tok in t}
    async with running(pki, {"answers": answers}, timeout=5) as (standin, client, _):
        with trio.fail_after(20):
            results = await client.push_many([(tok, "m") for tok in t])
    assert all(r.reason == "BadDeviceToken" for r in results)  # ~100 KB of bodies acknowledged


async def test_idle_connection_is_pinged(pki):
    async with running(pki, ping_interval=0.2) as (standin, client, _):
        assert (await client.push("dd" * 32, "m")).ok
        await trio.sleep(1.0)
        assert standin.pings >= 2
        assert client.connected and standin.connections == 1


async def test_invalid_token_and_missing_certificate_fail_locally(pki):
    async with running(pki) as (standin, client, _):
        bad = await client.push("not-hex", "m")
        client.set_certificate(None)
        none = await client.push("ee" * 32, "m")
    assert bad.status is PushStatus.REJECTED and bad.reason == "InvalidTokenFormat"
    assert none.status is PushStatus.FAILED and none.reason == "NoPushCertificate"
    assert standin.requests == []


async def test_no_hot_loop_when_tls_is_refused(pki):
    async with running(pki, {"refuse": "tls"}, backoff_initial=0.05, backoff_max=0.4,
                       max_attempts=2) as (standin, client, log):
        cpu = time.process_time()
        results = []
        with trio.move_on_after(3):
            while True:  # a caller that keeps asking
                results.append(await client.push("ff" * 32, "m"))
        cpu = time.process_time() - cpu
    assert results and all(r.status is PushStatus.FAILED for r in results)
    assert results[0].reason.startswith("ConnectionFailed")
    # backoff 0.05 -> 0.4 s cap (jittered) over 3 s: about a dozen attempts, not thousands
    assert 3 <= standin.connections <= 25, standin.connections
    assert len(log.lines) <= standin.connections + 2
    assert cpu < 1.0, cpu


@pytest.mark.parametrize("refuse", ["403", "500"])
async def test_no_hot_loop_when_everything_is_refused(pki, refuse):
    async with running(pki, {"refuse": refuse}, backoff_initial=0.05, max_attempts=3) as (
            standin, client, log):
        result = await client.push("ab" * 32, "m")
        count = len(standin.requests)
        await trio.sleep(1.0)  # nothing further happens on its own
        assert len(standin.requests) == count
    assert count == (1 if refuse == "403" else 3)
    assert result.status is (PushStatus.CERTIFICATE if refuse == "403" else PushStatus.FAILED)
    assert standin.connections == 1
    assert len(log.lines) <= 2


async def test_long_tokens_and_odd_push_magic_encode_correctly(pki):
    # a 100-byte token makes :path longer than 127 bytes: a multi-byte HPACK length
    token = bytes(range(100))
    magic = 'A"quote\\and-unicode-é'
    async with running(pki) as (standin, client, _):
        assert (await client.push(token, magic)).ok
    [req] = standin.requests
    assert req.token == token.hex()
    assert json.loads(req.body) == {"mdm": magic}
    assert b" " not in req.body


async def test_certificate_the_server_does_not_trust_fails_with_backoff(pki):
    stranger = make_push_cert(make_ca("Not Apple"))
    async with running(pki, certificate=push_cert(stranger), backoff_initial=0.05,
                       max_attempts=2) as (standin, client, log):
        result = await client.push("ab" * 32, "m")
        await trio.sleep(0.5)
    assert result.status is PushStatus.FAILED and result.reason.startswith("ConnectionFailed")
    assert standin.requests == [] and standin.connections == 2  # one per attempt, then quiet
    assert client.last_connection_error


async def test_stopping_the_client_answers_every_waiting_push(pki):
    standin = StandIn.create(pki["server"].cert_pem, pki["server"].key_pem, pki["push_ca"].cert_pem,
                             refuse="500")
    outcome = {}
    async with trio.open_nursery() as outer:
        await outer.start(standin.serve)
        client = APNsClient(standin.url, ca_file=pki["ca_file"], certificate=push_cert(pki["push"]),
                            backoff_initial=30, backoff_max=30)
        with trio.CancelScope() as client_scope:

            async def caller():
                outcome["results"] = await client.push_many([("ab" * 32, "m"), ("cd" * 32, "m")])

            async with trio.open_nursery() as inner:
                await inner.start(client.run)
                outer.start_soon(caller)
                while len(standin.requests) < 2:  # both answered 500, now waiting out a 15-30 s backoff
                    await trio.sleep(0.01)
                await trio.sleep(0.05)
                client_scope.cancel()
        with trio.fail_after(2):
            while "results" not in outcome:
                await trio.sleep(0.01)
        outer.cancel_scope.cancel()
    assert [r.reason for r in outcome["results"]] == ["ClientStopped", "ClientStopped"]


async def test_dead_link_is_found_by_ping_and_replaced(pki):
    async with running(pki, {"stall_after": 2}, ping_interval=0.2, timeout=0.6,
                       backoff_initial=0.05) as (standin, client, log):
        assert (await client.push("a1" * 32, "m")).ok
        # the link dies under this one: it times out, PING finds the link dead, a new one delivers it
        result = await client.push("a2" * 32, "m")
        assert result.ok
        assert standin.connections == 2 and standin.tokens() == ["a1" * 32, "a2" * 32]
    closed = [fields for _, event, fields in log.lines if event == "apns_connection_closed"]
    assert closed and closed[0]["reason"] == "PING unanswered"


async def test_a_server_without_alpn_h2_is_refused(pki):
    async with running(pki, backoff_initial=0.05, max_attempts=2) as (standin, client, log):
        standin.ssl_context.set_alpn_protocols(["http/1.1"])  # an HTTPS server, but not HTTP/2
        result = await client.push("ab" * 32, "m")
    assert result.status is PushStatus.FAILED and "ALPN h2" in result.reason
    assert standin.handshakes >= 1 and standin.requests == []
    assert "ALPN h2" in client.last_connection_error
