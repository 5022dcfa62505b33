"""Push certificate life and pushes through the real server (real TLS, real SQLite) and the APNs stand-in."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from appliance.push.pushcert import load_pem
from appliance.push.scheduler import PushService
from appliance.store.timefmt import now, to_text
from appliance.supervisor import status_line
from tests.support.apns_certs import make_ca, make_push_cert, make_server
from tests.support.apns_standin import Answer, StandIn
from tests.support.harness import make_config, start_server
from tests.support.mdm_support import command_body, start_mdm_server
from tests.support.push_support import NOW, add_enrollment, db, import_cert, metric_lines, scrape


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("apns-pki")
    server_ca = make_ca("Stand-in server CA")
    push_ca = make_ca("Stand-in Apple push CA")
    (folder / "apns-ca.pem").write_bytes(server_ca.cert_pem)
    return {"server": make_server(server_ca), "push_ca": push_ca, "ca_file": folder / "apns-ca.pem"}


@pytest.fixture
def fast_polls(monkeypatch):
    monkeypatch.setattr(PushService, "cert_poll_seconds", 0.1)


@pytest.fixture
async def standin(nursery, pki):
    s = StandIn.create(pki["server"].cert_pem, pki["server"].key_pem, pki["push_ca"].cert_pem)
    await nursery.start(s.serve)
    return s


@pytest.fixture
async def app(nursery, tmp_path, pki, standin, fast_polls):
    path = make_config(tmp_path, apns={"url": standin.url, "ca_file": str(pki["ca_file"]),
                                       "repush_interval": "1s"})
    server = await start_server(nursery, path)
    yield server
    await server.aclose()


def write_pem(folder: Path, ident, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    cert.write_bytes(ident.cert_pem)
    key.write_bytes(ident.key_pem)
    return cert, key


async def cli(config_path: Path, *args: str) -> tuple[int, str, str]:
    """The real CLI in its own process, as an operator runs it next to the running server."""
    result = await trio.run_process(
        [sys.executable, "-c", "from appliance.cli import main; main()", *args, "--config",
         str(config_path)],
        capture_stdout=True, capture_stderr=True, check=False,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": "/usr/bin:/bin"},
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def enrollment(server, eid: str) -> dict:
    with db(server) as c:
        c.row_factory = sqlite3.Row
        return dict(c.execute("SELECT * FROM enrollments WHERE id = ?", (eid,)).fetchone())


async def push_topic(server) -> str | None:
    async with server.client() as client:
        body = (await client.get("/healthz")).json()
    return body["checks"]["push"]["topic"]


async def wait_for_topic(server, topic: str) -> None:
    with trio.fail_after(5):
        while await push_topic(server) != topic:
            await trio.sleep(0.05)


async def test_cli_import_is_picked_up_without_restart_and_pushes(app, standin, pki, tmp_path):
    async with app.client() as client:
        health = (await client.get("/healthz")).json()["checks"]["push"]
    assert health["state"] == "missing" and health["status"] == "warning"
    ident = make_push_cert(pki["push_ca"], rsa_key=True)
    cert, key = write_pem(tmp_path, ident, "push")
    code, out, err = await cli(app.config_path, "push-cert", "import", str(cert), str(key))
    assert code == 0, err
    topic = ident.cert.subject.get_attributes_for_oid(NameOID.USER_ID)[0].value
    assert topic in out
    await wait_for_topic(app, topic)

    add_enrollment(app, "UDID-1", bytes.fromhex("11" * 32))
    async with app.api_client() as api:
        answer = await api.post("/v1/push/UDID-1")
    assert answer.status_code == 200
    apns_id = answer.json()["status"]["UDID-1"]["push_result"]
    [req] = standin.requests
    assert req.client_cert == ident.der and req.headers["apns-topic"] == topic
    assert req.token == "11" * 32 and req.body == b'{"mdm":"magic-UDID-1"}'
    row = enrollment(app, "UDID-1")
    assert (row["last_push_result"], row["last_push_id"], row["last_push_error"]) == ("ok", apns_id, None)
    assert row["last_push_at"]

    code, out, _ = await cli(app.config_path, "push-cert", "show")
    assert code == 0 and topic in out and "days left" in out


async def test_api_import_topic_change_refused_unless_forced(app, standin, pki):
    first, second = make_push_cert(pki["push_ca"]), make_push_cert(pki["push_ca"])
    async with app.api_client() as api:
        assert (await api.get("/v1/pushcert")).status_code == 404
        put = await api.put("/v1/pushcert", content=first.cert_pem + first.key_pem)
        assert put.status_code == 200, put.text
        topic1 = put.json()["topic"]
        assert (await api.get("/v1/pushcert")).json()["topic"] == topic1
        assert (await api.get("/v1/pushcert")).json()["not_after"].endswith("Z")

        refused = await api.put("/v1/pushcert", content=second.cert_pem + second.key_pem)
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "topic_changed"
        assert "orphan" in refused.json()["error"]["message"]
        assert (await api.get("/v1/pushcert")).json()["topic"] == topic1

        forced = await api.put("/v1/pushcert?force=1", content=second.cert_pem + second.key_pem)
        assert forced.status_code == 200
        topic2 = forced.json()["topic"]
        assert topic2 != topic1 and (await api.get("/v1/pushcert")).json()["topic"] == topic2

        # the running client switched identity at once: the stand-in sees the new certificate
        add_enrollment(app, "UDID-2", bytes.fromhex("22" * 32))
        assert (await api.post("/v1/push/UDID-2")).status_code == 200
    assert standin.requests[-1].client_cert == second.der


@pytest.mark.parametrize("body, reason", [
    (b"", "empty"), (b"garbage", "PEM"), (None, "expired"), ("mismatch", "does not match"),
    ("wrong-topic", "com.apple.mgmt."),
])
async def test_api_refuses_bad_certificates(app, pki, body, reason):
    if body is None:
        old = make_push_cert(pki["push_ca"], days=-1, not_before_days=-400)
        body = old.cert_pem + old.key_pem
    elif body == "mismatch":
        body = make_push_cert(pki["push_ca"]).cert_pem + make_push_cert(pki["push_ca"]).key_pem
    elif body == "wrong-topic":
        bad = make_push_cert(pki["push_ca"], "com.example.notmdm")
        body = bad.cert_pem + bad.key_pem
    async with app.api_client() as api:
        answer = await api.put("/v1/pushcert", content=body)
        assert answer.status_code == 400
        assert reason.lower() in answer.json()["error"]["message"].lower()
        assert (await api.get("/v1/pushcert")).status_code == 404  # nothing stored
        assert (await api.put("/v1/pushcert", content=body, headers={"Authorization": "Bearer x"})
                ).status_code == 401


async def test_cli_refuses_topic_change_expired_and_garbage(app, pki, tmp_path):
    a = write_pem(tmp_path, make_push_cert(pki["push_ca"]), "a")
    b = write_pem(tmp_path, make_push_cert(pki["push_ca"]), "b")
    old = write_pem(tmp_path, make_push_cert(pki["push_ca"], days=-1, not_before_days=-400), "old")
    assert (await cli(app.config_path, "push-cert", "import", *map(str, a)))[0] == 0
    code, out, err = await cli(app.config_path, "push-cert", "import", *map(str, b))
    assert code != 0 and "orphan" in err and err.count("\n") == 1
    code, _, err = await cli(app.config_path, "push-cert", "import", *map(str, old))
    assert code != 0 and "expired" in err and err.count("\n") == 1
    code, _, err = await cli(app.config_path, "push-cert", "import", str(tmp_path / "nope.pem"))
    assert code != 0 and "cannot read" in err
    code, _, err = await cli(app.config_path, "push-cert", "import", *map(str, b), "--force")
    assert code == 0, err
    _, out, _ = await cli(app.config_path, "push-cert", "show", "--json")
    assert json.loads(out)["topic"] == load_pem(b[0].read_bytes(), b[1].read_bytes()).topic


async def test_cli_csr_keeps_key_private_and_pairs_it_on_import(app, tmp_path):
    code, out, err = await cli(app.config_path, "push-cert", "csr", "--cn", "Example Org",
                               "--out", str(tmp_path / "push.csr"))
    assert code == 0, err
    key_path = app.config.data_dir / "push-csr.key"
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert b"CERTIFICATE REQUEST" in (tmp_path / "push.csr").read_bytes()
    code, _, err = await cli(app.config_path, "push-cert", "csr", "--out", str(tmp_path / "x.csr"))
    assert code != 0 and "--force" in err


async def test_push_api_answers_per_id_and_records_each_outcome(app, standin, pki):
    t_ok, t_gone, t_bad = (bytes([n]) * 32 for n in (0x31, 0x32, 0x33))
    standin.answers[t_gone.hex()] = Answer(410, "Unregistered", 1767225600000)
    standin.answers[t_bad.hex()] = Answer(400, "BadDeviceToken")
    cert = make_push_cert(pki["push_ca"])
    for eid, tok in (("E-OK", t_ok), ("E-GONE", t_gone), ("E-BAD", t_bad)):
        add_enrollment(app, eid, tok)
    add_enrollment(app, "E-OFF", bytes([0x34]) * 32, active=0)
    async with app.api_client() as api:
        assert (await api.put("/v1/pushcert", content=cert.cert_pem + cert.key_pem)).status_code == 200
        answer = await api.get("/v1/push/E-OK,E-GONE,E-BAD,E-OFF,NOPE")
        assert answer.status_code == 207
        status = answer.json()["status"]
        assert list(status) == ["E-OK", "E-GONE", "E-BAD", "E-OFF", "NOPE"]
        assert set(status["E-OK"]) == {"push_result"}
        assert "Unregistered" in status["E-GONE"]["push_error"]
        assert "BadDeviceToken" in status["E-BAD"]["push_error"]
        assert "not active" in status["E-OFF"]["push_error"]
        assert "unknown" in status["NOPE"]["push_error"]

        gone = enrollment(app, "E-GONE")
        assert gone["token_invalid_at"] == "2026-01-01T00:00:00.000000Z"  # APNs' timestamp
        assert gone["last_push_result"] == "unregistered"
        bad = enrollment(app, "E-BAD")
        assert bad["last_push_error"] == "400 BadDeviceToken" and bad["token_invalid_at"] is None

        sent = len(standin.requests)
        again = await api.post("/v1/push/E-GONE")
        assert again.status_code == 500 and "TokenUpdate" in again.json()["status"]["E-GONE"]["push_error"]
        assert len(standin.requests) == sent  # an invalid token is not pushed again
        assert (await api.post("/v1/push/E-OK")).status_code == 200
        assert (await api.post("/v1/push/,")).status_code == 400

    with db(app) as c, c:  # what the TokenUpdate code does: a new token clears token_invalid_at
        c.execute("UPDATE enrollments SET token = ?, token_invalid_at = NULL WHERE id = 'E-GONE'",
                  (bytes([0x35]) * 32,))
    async with app.api_client() as api:
        assert (await api.post("/v1/push/E-GONE")).status_code == 200
    assert standin.requests[-1].token == "35" * 32


async def test_requests_close_together_become_one_push(app, standin, pki):
    cert = make_push_cert(pki["push_ca"])
    add_enrollment(app, "C-1", bytes([0x41]) * 32)
    add_enrollment(app, "C-2", bytes([0x42]) * 32)
    async with app.api_client() as api:
        assert (await api.put("/v1/pushcert", content=cert.cert_pem + cert.key_pem)).status_code == 200
    push = app.runtime.push
    for _ in range(50):
        push.request_push(["C-1"])
    push.request_push(["C-1", "C-2"])
    with trio.fail_after(5):
        while enrollment(app, "C-2")["last_push_result"] is None or \
                enrollment(app, "C-1")["last_push_result"] is None:
            await trio.sleep(0.05)
    await trio.sleep(0.3)
    assert sorted(standin.tokens()) == ["41" * 32, "42" * 32]


async def test_commands_waiting_too_long_are_pushed_again(app, standin, pki):
    cert = make_push_cert(pki["push_ca"])
    add_enrollment(app, "W-1", bytes([0x51]) * 32)
    add_enrollment(app, "W-2", bytes([0x52]) * 32)  # nothing queued: never re-pushed
    with db(app) as c, c:
        c.execute("INSERT INTO commands (uuid, request_type, body, created_at) VALUES "
                  "('cmd-1', 'DeviceInformation', x'00', ?)", (NOW,))
        c.execute("INSERT INTO queue (enrollment_id, command_uuid, created_at) VALUES ('W-1', 'cmd-1', ?)",
                  (NOW,))
    async with app.api_client() as api:
        assert (await api.put("/v1/pushcert", content=cert.cert_pem + cert.key_pem)).status_code == 200
    with trio.fail_after(5):
        while "51" * 32 not in standin.tokens():
            await trio.sleep(0.05)
    await trio.sleep(0.6)  # within repush_interval (1 s) of the last push: not again yet
    assert standin.tokens().count("51" * 32) == 1
    assert "52" * 32 not in standin.tokens()


async def test_enqueue_pushes_the_enrolled_device_and_410_waits_for_token_update(
        nursery, tmp_path, pki, standin, fast_polls):
    mdm = await start_mdm_server(nursery, tmp_path, apns={"url": standin.url,
                                                          "ca_file": str(pki["ca_file"])})
    server = mdm.server
    cert = make_push_cert(pki["push_ca"])
    async with server.api_client() as api:
        assert (await api.put("/v1/pushcert", content=cert.cert_pem + cert.key_pem)).status_code == 200
        async with mdm.device("SIM-UDID-1") as device:
            await device.enroll()
            put = await api.put("/v1/enqueue/SIM-UDID-1", content=command_body("CMD-P1"))
            assert put.status_code == 200, put.text
            with trio.fail_after(5):
                while not standin.requests:
                    await trio.sleep(0.02)
            [req] = standin.requests
            assert req.token == device.push_token.hex()
            assert req.body == ('{"mdm":"%s"}' % device.push_magic).encode()
            assert req.headers["apns-topic"] == (await api.get("/v1/pushcert")).json()["topic"]

            quiet = await api.put("/v1/enqueue/SIM-UDID-1?nopush=1", content=command_body("CMD-P2"))
            assert quiet.status_code == 200
            await trio.sleep(0.3)
            assert len(standin.requests) == 1

            standin.answers[device.push_token.hex()] = Answer(410, "Unregistered", 1767225600000)
            assert (await api.post("/v1/push/SIM-UDID-1")).status_code == 500
            assert (await api.post("/v1/push/SIM-UDID-1")).status_code == 500  # not sent again
            assert len(standin.requests) == 2
            await device.token_update()  # the device checks in with a (new) token: pushable again
            del standin.answers[device.push_token.hex()]
            answer = await api.post("/v1/push/SIM-UDID-1")
            assert answer.status_code == 200, answer.text
            assert len(standin.requests) == 3
    server.stop()


async def test_cli_csr_then_import_of_apples_answer_uses_the_kept_key(app, pki, tmp_path):
    code, _, err = await cli(app.config_path, "push-cert", "csr", "--out", str(tmp_path / "p.csr"))
    assert code == 0, err
    csr = x509.load_pem_x509_csr((tmp_path / "p.csr").read_bytes())
    # what Apple's portal hands back: a certificate for the CSR's key, subject UID = topic
    now = dt.datetime.now(dt.timezone.utc)
    topic = "com.apple.mgmt.External.6d1a1d3e-2c3b-4f5e-8a9b-0c1d2e3f4a5b"
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.USER_ID, topic)]))
            .issuer_name(pki["push_ca"].cert.subject).public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
            .sign(pki["push_ca"].key, hashes.SHA256()))
    (tmp_path / "apple.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    code, out, err = await cli(app.config_path, "push-cert", "import", str(tmp_path / "apple.pem"))
    assert code == 0, err
    assert topic in out
    assert not (app.config.data_dir / "push-csr.key").exists()
    await wait_for_topic(app, topic)


async def test_cli_imports_a_p12_with_password(app, pki, tmp_path):
    ident = make_push_cert(pki["push_ca"])
    p12 = tmp_path / "push.p12"
    p12.write_bytes(pkcs12.serialize_key_and_certificates(
        b"push", ident.key, ident.cert, None, serialization.BestAvailableEncryption(b"pw")))
    code, _, err = await cli(app.config_path, "push-cert", "import", str(p12), "--password", "bad")
    assert code != 0 and "password" in err
    code, out, err = await cli(app.config_path, "push-cert", "import", str(p12), "--password", "pw")
    assert code == 0, err


async def test_requests_during_a_push_in_flight_become_one_follow_up(app, standin, pki):
    cert = make_push_cert(pki["push_ca"])
    add_enrollment(app, "F-1", bytes([0x61]) * 32)
    async with app.api_client() as api:
        assert (await api.put("/v1/pushcert", content=cert.cert_pem + cert.key_pem)).status_code == 200
    standin.delay = 0.3
    push = app.runtime.push
    push.request_push(["F-1"])
    with trio.fail_after(5):
        while not standin.requests:
            await trio.sleep(0.01)
    for _ in range(20):  # while the first is unanswered
        push.request_push(["F-1"])
        await trio.sleep(0.005)
    with trio.fail_after(5):
        while len(standin.requests) < 2:
            await trio.sleep(0.01)
    await trio.sleep(0.6)
    assert standin.tokens() == ["61" * 32] * 2


# ----- review additions: deadlines, every answer's effect, expiry everywhere, hot swaps, no hot loop ----

@pytest.fixture
async def blackhole(nursery):
    """An 'APNs' that accepts TCP and then says nothing (a firewall eating the handshake)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    held = []

    async def hold(stream):
        held.append(stream)
        await trio.sleep_forever()

    nursery.start_soon(partial(trio.serve_listeners, hold, listeners))
    yield f"https://localhost:{listeners[0].socket.getsockname()[1]}"
    for stream in held:
        await stream.aclose()


async def test_push_api_answers_by_its_deadline_when_apns_is_unreachable(nursery, tmp_path, pki, blackhole,
                                                                         fast_polls):
    path = make_config(tmp_path, apns={"url": blackhole, "ca_file": str(pki["ca_file"]),
                                       "push_api_deadline": "1s"})
    server = await start_server(nursery, path)
    await import_cert(server, make_push_cert(pki["push_ca"]))
    add_enrollment(server, "D-1", bytes([0x81]) * 32)
    async with server.api_client() as api:
        started = trio.current_time()
        with trio.fail_after(5):  # without a deadline: 3 attempts x 15 s timeout
            answer = await api.post("/v1/push/D-1,NOPE")
        took = trio.current_time() - started
    assert 0.9 <= took < 3, took
    assert answer.status_code == 500
    for eid in ("D-1", "NOPE"):
        assert "did not answer within 1 s" in answer.json()["status"][eid]["push_error"]
    await server.aclose()


async def test_a_push_past_the_deadline_carries_on_and_is_recorded(nursery, tmp_path, pki, standin, fast_polls):
    path = make_config(tmp_path, apns={"url": standin.url, "ca_file": str(pki["ca_file"]),
                                       "push_api_deadline": "0.5s"})
    server = await start_server(nursery, path)
    await import_cert(server, make_push_cert(pki["push_ca"]))
    add_enrollment(server, "L-1", bytes([0x82]) * 32)
    standin.hold = trio.Event()
    async with server.api_client() as api:
        answer = await api.post("/v1/push/L-1")
    assert answer.status_code == 500 and "goes on" in answer.json()["status"]["L-1"]["push_error"]
    assert enrollment(server, "L-1")["last_push_result"] is None
    standin.hold.set()
    with trio.fail_after(5):
        while enrollment(server, "L-1")["last_push_result"] != "ok":
            await trio.sleep(0.05)
    assert len(standin.requests) == 1  # the late answer was used, not a second push
    await server.aclose()


async def test_every_answer_shows_on_the_device_api_and_in_metrics(app, standin, pki):
    answers = {  # enrollment id -> (token byte, stand-in answer, result, reason in last_push_error)
        "R-OK": (0x90, None, "ok", None),
        "R-410": (0x91, Answer(410, "Unregistered", 1767225600000), "unregistered", "Unregistered"),
        "R-400": (0x92, Answer(400, "BadDeviceToken"), "rejected", "BadDeviceToken"),
        "R-TOPIC": (0x93, Answer(400, "DeviceTokenNotForTopic"), "rejected", "DeviceTokenNotForTopic"),
        "R-403": (0x94, Answer(403, "BadCertificate"), "certificate", "BadCertificate"),
        "R-429": (0x95, Answer(429, "TooManyRequests"), "throttled", "TooManyRequests"),
        "R-503": (0x96, Answer(503, "ServiceUnavailable"), "failed", "ServiceUnavailable"),
    }
    for eid, (byte, answer, _, _) in answers.items():
        add_enrollment(app, eid, bytes([byte]) * 32)
        if answer:
            standin.answers[(bytes([byte]) * 32).hex()] = answer
    await import_cert(app, make_push_cert(pki["push_ca"]))
    async with app.api_client() as api:
        pushed = await api.post("/v1/push/" + ",".join(eid for eid in answers if eid != "R-403"))
        assert pushed.status_code == 207
        # alone, last: a 200 on the same certificate clears a 403 from health (it was per token then)
        assert (await api.post("/v1/push/R-403")).status_code == 500
        for eid, (_, _, result, reason) in answers.items():
            device = (await api.get(f"/v1/devices/{eid}")).json()
            assert device["last_push_result"] == result, (eid, device)
            assert device["last_push_at"], eid
            if reason is None:
                assert device["last_push_error"] is None
            else:
                assert reason in device["last_push_error"], (eid, device)
        gone = (await api.get("/v1/devices/R-410")).json()
        assert gone["token_invalid_at"] == "2026-01-01T00:00:00.000000Z"
        for eid in ("R-400", "R-TOPIC", "R-403", "R-429", "R-503"):  # no mass deletion: still pushable
            assert (await api.get(f"/v1/devices/{eid}")).json()["token_invalid_at"] is None
        # 429: that token is left alone for a while (no request reaches APNs)
        sent = len(standin.requests)
        again = await api.post("/v1/push/R-429")
        assert "throttled" in again.json()["status"]["R-429"]["push_error"] and len(standin.requests) == sent
    assert standin.tokens().count("96" * 32) == 3  # 5xx: retried, bounded
    async with app.client() as client:
        push_health = (await client.get("/healthz")).json()["checks"]["push"]
    assert push_health["status"] == "error" and push_health["certificate_error"] == "BadCertificate"

    with trio.fail_after(5):  # the summary gauges refresh within about a second of the pushes
        while True:
            text = await scrape(app)
            reasons = metric_lines(text, "mdm_enrollments_by_last_push_reason")
            if len(reasons) >= 6:
                break
            await trio.sleep(0.1)
    for result, reason in (("unregistered", "Unregistered"), ("rejected", "BadDeviceToken"),
                           ("rejected", "DeviceTokenNotForTopic"), ("certificate", "BadCertificate"),
                           ("throttled", "TooManyRequests"), ("failed", "ServiceUnavailable")):
        assert reasons[f'{{reason="{reason}",result="{result}"}}'] == 1, reasons
    by_result = metric_lines(text, "mdm_enrollments_by_last_push_result")
    assert by_result['{result="ok"}'] == 1 and by_result['{result="rejected"}'] == 2
    totals = metric_lines(text, "mdm_pushes_total")
    assert totals['{result="certificate"}'] >= 1 and totals['{result="failed"}'] >= 1
    assert metric_lines(text, "mdm_push_status")[""] == 2  # 403: the certificate is the problem


@pytest.mark.parametrize("state", ["warning", "expired"])
async def test_expiry_shows_in_log_daily_status_health_and_metrics(nursery, tmp_path, pki, standin,
                                                                  monkeypatch, caplog, state):
    monkeypatch.setattr(PushService, "cert_poll_seconds", 0.1)
    monkeypatch.setattr(PushService, "expiry_check_seconds", 0.3)  # "daily", sped up
    path = make_config(tmp_path, apns={"url": standin.url, "ca_file": str(pki["ca_file"])})
    server = await start_server(nursery, path)
    if state == "warning":
        ident = make_push_cert(pki["push_ca"], days=10)
        await import_cert(server, ident)
        pc = load_pem(ident.cert_pem, ident.key_pem)
    else:  # a certificate that expired while in use (written straight into the table: time passing)
        old = make_push_cert(pki["push_ca"], days=-1, not_before_days=-365)
        pc = load_pem(old.cert_pem, old.key_pem)
        with db(server) as c, c:
            c.execute("INSERT INTO push_certificates (topic, certificate, private_key, sha256, not_before, "
                      "not_after, imported_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (pc.topic, pc.cert_pem, pc.key_pem, pc.fingerprint, NOW, NOW, NOW))
        await wait_for_topic(server, pc.topic)
    event, level = (("push_certificate_expires_soon", "WARNING") if state == "warning"
                    else ("push_certificate_expired", "ERROR"))
    with trio.fail_after(5):  # log: at load, then again at every check
        while len([r for r in caplog.records if r.getMessage() == event]) < 3:
            await trio.sleep(0.05)
    assert {r.levelname for r in caplog.records if r.getMessage() == event} == {level}

    status = await status_line(server.runtime)  # the STATUS= text systemd shows
    async with server.client() as client:
        health = (await client.get("/healthz")).json()
    push = health["checks"]["push"]
    text = await scrape(server)
    days = metric_lines(text, "mdm_push_certificate_days_left")[""]
    if state == "warning":
        assert "WARNING" in status and "expires in" in status and pc.topic in status
        assert push["status"] == "warning" and push["state"] == "warning" and push["days_left"] in (9, 10)
        assert health["status"] == "warning"
        assert metric_lines(text, "mdm_push_status")[""] == 1 and 9 < days <= 10
    else:
        assert "ERROR" in status and "EXPIRED" in status
        assert push["status"] == "error" and push["state"] == "expired" and push["days_left"] < 0
        assert health["status"] == "error"
        assert metric_lines(text, "mdm_push_status")[""] == 2 and days < 0
        add_enrollment(server, "X-1", bytes([0x71]) * 32)
        async with server.api_client() as api:
            answer = await api.post("/v1/push/X-1")
        assert answer.status_code == 500
        assert answer.json()["status"]["X-1"]["push_error"] == "PushCertificateExpired"
        assert enrollment(server, "X-1")["last_push_error"] == "PushCertificateExpired"
        assert standin.handshakes == 0  # APNs would refuse it anyway: no handshakes
    code, out, err = await cli(server.config_path, "push-cert", "show")
    assert pc.topic in out and "days left" in out
    if state == "warning":
        assert code == 0 and "within 30 days" in err
    else:
        assert code == 1 and "EXPIRED" in err
    await server.aclose()


async def test_renewals_by_cli_and_api_reconnect_the_running_server_with_each_new_certificate(
        app, standin, pki, tmp_path):
    """Same topic (a renewal), three identities: API, then CLI (writes the database), then API again.
    After each, the live APNs connection is replaced and the stand-in sees the new client certificate."""
    topic = "com.apple.mgmt.External.1b2c3d4e-5f60-4718-8293-a4b5c6d7e8f9"
    first, second, third = (make_push_cert(pki["push_ca"], topic) for _ in range(3))
    add_enrollment(app, "S-1", bytes([0xA1]) * 32)

    async def push_and_see(expected) -> None:
        with trio.fail_after(5):  # the CLI's import is noticed by polling: wait for a push with it
            while True:
                async with app.api_client() as api:
                    assert (await api.post("/v1/push/S-1")).status_code == 200
                if standin.requests[-1].client_cert == expected.der:
                    return
                await trio.sleep(0.05)

    await import_cert(app, first)
    await push_and_see(first)
    connections = standin.handshakes
    cert, key = write_pem(tmp_path, second, "renewed")
    code, _, err = await cli(app.config_path, "push-cert", "import", str(cert), str(key))
    assert code == 0, err
    await push_and_see(second)
    await import_cert(app, third)
    async with app.api_client() as api:  # the API's import is used at once, no polling
        assert (await api.post("/v1/push/S-1")).status_code == 200
    assert standin.requests[-1].client_cert == third.der
    assert standin.handshakes == connections + 2  # one new connection per certificate, no more
    with trio.fail_after(5):  # and the old connections were closed, not left open
        while len(standin._live) > 1:
            await trio.sleep(0.05)


async def test_apns_refusing_everything_costs_bounded_cpu_and_log_lines(app, standin, pki, caplog):
    """The whole server (re-push worker, coalescer, client) against an APNs that refuses every
    connection, with 20 devices whose commands wait and an operator pressing /v1/push meanwhile."""
    standin.refuse = "tls"
    with db(app) as c, c:
        c.execute("INSERT INTO commands (uuid, request_type, body, created_at) VALUES "
                  "('cmd-h', 'DeviceInformation', x'00', ?)", (NOW,))
    for n in range(20):
        add_enrollment(app, f"H-{n}", bytes([0xB0 + n]) * 32)
        with db(app) as c, c:
            c.execute("INSERT INTO queue (enrollment_id, command_uuid, created_at) VALUES (?, 'cmd-h', ?)",
                      (f"H-{n}", NOW))
    await import_cert(app, make_push_cert(pki["push_ca"]))
    app.runtime.push.api_deadline = 1.0  # [apns] push_api_deadline
    caplog.clear()
    cpu, started = time.process_time(), trio.current_time()
    async with app.api_client() as api:
        while trio.current_time() - started < 4:
            answer = await api.post("/v1/push/H-0")
            assert answer.status_code == 500 and "push_error" in answer.json()["status"]["H-0"]
            await trio.sleep(0.2)
    cpu = time.process_time() - cpu
    lines = [r for r in caplog.records if r.name.startswith("appliance") and r.name != "appliance.http"]
    # jittered exponential backoff from 1 s: a handful of connection attempts in 4 s, not thousands
    assert 1 <= standin.connections <= 8, standin.connections
    assert len(lines) <= 40, [r.getMessage() for r in lines]
    assert cpu < 2.0, cpu  # everything in this process: test client, server, TLS; a hot loop burns 4 s
    with trio.fail_after(10):  # the re-push worker's pushes fail after their bounded attempts, recorded
        while enrollment(app, "H-5")["last_push_result"] != "failed":
            await trio.sleep(0.1)


async def test_a_push_lost_to_an_apns_outage_is_made_good_soon_not_after_a_day(
        nursery, tmp_path, pki, standin, monkeypatch):
    monkeypatch.setattr(PushService, "cert_poll_seconds", 0.1)
    monkeypatch.setattr(PushService, "failed_retry_seconds", 0.5)  # 10 min in production
    path = make_config(tmp_path, apns={"url": standin.url, "ca_file": str(pki["ca_file"]),
                                       "repush_interval": "24h"})
    server = await start_server(nursery, path)
    client = server.runtime.push.client
    client.backoff_initial, client.backoff_max = 0.05, 0.2
    await import_cert(server, make_push_cert(pki["push_ca"]))
    add_enrollment(server, "O-1", bytes([0xC1]) * 32)
    add_enrollment(server, "O-2", bytes([0xC2]) * 32)  # failed too, but nothing waits for it
    with db(server) as c, c:
        c.execute("INSERT INTO commands (uuid, request_type, body, created_at) VALUES "
                  "('cmd-o', 'DeviceInformation', x'00', ?)", (to_text(now()),))
        c.execute("INSERT INTO queue (enrollment_id, command_uuid, created_at) VALUES ('O-1', 'cmd-o', ?)",
                  (to_text(now()),))
    standin.refuse = "tls"  # APNs unreachable while the command is enqueued
    server.runtime.push.request_push(["O-1", "O-2"])
    with trio.fail_after(10):
        while enrollment(server, "O-1")["last_push_result"] != "failed" or \
                enrollment(server, "O-2")["last_push_result"] != "failed":
            await trio.sleep(0.05)
    standin.refuse = None  # APNs is back
    with trio.fail_after(10):
        while enrollment(server, "O-1")["last_push_result"] != "ok":
            await trio.sleep(0.05)
    assert standin.tokens() == ["c1" * 32]
    await trio.sleep(1.2)  # pushed once it worked; and O-2 (nothing pending) is left alone
    assert standin.tokens() == ["c1" * 32]
    await server.aclose()
