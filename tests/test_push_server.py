"""Push certificate life and pushes through the real server (real TLS, real SQLite) and the APNs stand-in."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import sys
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from appliance.push.pushcert import load_pem
from appliance.push.scheduler import PushService
from tests.apns_certs import make_ca, make_push_cert, make_server
from tests.apns_standin import Answer, StandIn
from tests.harness import make_config, start_server
from tests.mdm_support import command_body, start_mdm_server

NOW = "2026-01-01T00:00:00.000000Z"


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
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"},
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def db(server):
    return contextlib.closing(sqlite3.connect(server.config.data_dir / "appliance.db", timeout=10))


def add_enrollment(server, eid: str, token: bytes, active: int = 1) -> None:
    with db(server) as c, c:
        c.execute("INSERT OR IGNORE INTO devices (id, created_at, updated_at) VALUES (?, ?, ?)",
                  (eid, NOW, NOW))
        c.execute(
            "INSERT INTO enrollments (id, device_id, type, topic, push_magic, token, active, "
            "created_at, updated_at) VALUES (?, ?, 'Device', 't', ?, ?, ?, ?, ?)",
            (eid, eid, f"magic-{eid}", token, active, NOW, NOW))


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


async def test_health_status_and_metrics_show_expiry(app, pki):
    soon = make_push_cert(pki["push_ca"], days=10)
    async with app.api_client() as api:
        assert (await api.put("/v1/pushcert", content=soon.cert_pem + soon.key_pem)).status_code == 200
    async with app.client() as client:
        health = (await client.get("/healthz")).json()
    push = health["checks"]["push"]
    assert push["status"] == "warning" and push["state"] == "warning"
    assert push["days_left"] in (9, 10) and push["not_after"].endswith("Z")
    assert "expires in" in await app.runtime.push.phrase()
    text = app.runtime.metrics.render().decode()
    days = [ln for ln in text.splitlines() if ln.startswith("mdm_push_certificate_days_left ")]
    assert days and 9 < float(days[0].split()[1]) <= 10


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


async def test_expired_certificate_is_an_error_in_health_and_status(app, pki):
    """A certificate that expires while in use (written straight into the table: time passing)."""
    old = make_push_cert(pki["push_ca"], days=-1, not_before_days=-365)
    pc = load_pem(old.cert_pem, old.key_pem)
    with db(app) as c, c:
        c.execute("INSERT INTO push_certificates (topic, certificate, private_key, sha256, not_before, "
                  "not_after, imported_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (pc.topic, pc.cert_pem, pc.key_pem, pc.fingerprint, NOW, NOW, NOW))
    await wait_for_topic(app, pc.topic)
    async with app.client() as client:
        health = (await client.get("/healthz")).json()
    assert health["status"] == "error"
    assert health["checks"]["push"]["state"] == "expired" and health["checks"]["push"]["days_left"] < 0
    assert "EXPIRED" in await app.runtime.push.phrase()
    add_enrollment(app, "X-1", bytes([0x71]) * 32)
    async with app.api_client() as api:
        answer = await api.post("/v1/push/X-1")
    assert answer.status_code == 500
    assert answer.json()["status"]["X-1"]["push_error"] == "PushCertificateExpired"
    assert enrollment(app, "X-1")["last_push_error"] == "PushCertificateExpired"


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
