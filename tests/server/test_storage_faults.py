"""Storage faults at the real server: a full disk or a lock held elsewhere is answered 503 with Retry-After,
nothing of a refused request is stored, and the server serves again without a restart once space returns.

Full disks are real (tests/support/full_disk.py): a tmpfs the test mounts and fills (root only, else
skipped) and SQLite's max_page_count on the server's own connection. I/O errors: tests/server/test_io_errors.py.
"""

from __future__ import annotations

import os
import plistlib
import sqlite3
import threading
import uuid
from dataclasses import dataclass

import pytest
import trio
from cryptography import x509
from trio.testing import wait_all_tasks_blocked

from appliance.store import scep as scep_store
from appliance.supervisor import status_line
from tests.support import apns_certs, scep_client
from tests.support.full_disk import PageLimit, Tmpfs
from tests.support.harness import free_port
from tests.support.mdm_support import MdmServer, command_body, start_mdm_server
from tests.support.webhook_receiver import Receiver, Running

UDID = "STORAGE-FAULT-UDID-0001"
PKI = "/scep?operation=PKIOperation"
BIG = 300_000  # bytes: a row that needs new pages, so a full database cannot take it


@dataclass
class Full:
    mdm: MdmServer
    disk: Tmpfs | PageLimit

    @property
    def server(self):
        return self.mdm.server


async def _full_server(nursery, tmp_path, kind: str, **overrides) -> tuple[MdmServer, Tmpfs | None]:
    tmpfs = Tmpfs.mount(tmp_path / "disk") if kind == "tmpfs" else None
    try:
        data_dir = str(tmpfs.path / "state") if tmpfs else "state"
        # APNs at a closed port: a test that imports a push certificate must not reach out to Apple.
        return await start_mdm_server(nursery, tmp_path, storage={"data_dir": data_dir},
                                      apns={"url": "https://127.0.0.1:9"}, **overrides), tmpfs
    except BaseException:
        if tmpfs:
            tmpfs.unmount()
        raise


@pytest.fixture(params=["tmpfs", "page_limit"])
async def full(request, tmp_path, nursery):
    mdm, tmpfs = await _full_server(nursery, tmp_path, request.param)
    try:
        yield Full(mdm, tmpfs or PageLimit(mdm.server.runtime.store))
    finally:
        await mdm.server.aclose()
        if tmpfs:
            tmpfs.unmount()


@pytest.fixture
async def tmpfs_full(tmp_path, nursery):
    mdm, tmpfs = await _full_server(nursery, tmp_path, "tmpfs")
    try:
        yield Full(mdm, tmpfs)
    finally:
        await mdm.server.aclose()
        tmpfs.unmount()


def big_command(command_uuid: str) -> bytes:
    return command_body(command_uuid, "InstallProfile", Payload=os.urandom(BIG))


def assert_unavailable(response, *, json: bool) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert int(response.headers["retry-after"]) > 0
    if json:
        assert response.json()["error"]["code"] == "storage_unavailable"
    else:
        assert "nothing of this request was stored" in response.text


async def enrolled(mdm: MdmServer, udid: str = UDID):
    device = mdm.device(udid)
    await device.enroll()
    return device


# --- a full disk ------------------------------------------------------------------------------------------

async def test_an_enqueue_refused_for_a_full_disk_is_not_stored_and_succeeds_once_space_returns(full):
    command_uuid = str(uuid.uuid4())
    async with await enrolled(full.mdm), full.server.api_client() as api:
        await full.disk.fill()
        refused = await api.put(f"/v1/enqueue/{UDID}?nopush=1", content=big_command(command_uuid))
        assert_unavailable(refused, json=True)
        assert (await api.get(f"/v1/commands/{command_uuid}")).status_code == 404
        await full.disk.free()
        again = await api.put(f"/v1/enqueue/{UDID}?nopush=1", content=big_command(command_uuid))
    assert again.status_code == 200, again.text  # not 409: the refused one left nothing behind


async def test_a_device_report_answered_503_is_not_lost_when_resent(full):
    command_uuid = str(uuid.uuid4())
    async with await enrolled(full.mdm) as device:
        await full.mdm.enqueue(command_uuid, [UDID])
        assert (await device.idle()).command_uuid == command_uuid
        await full.disk.fill()
        result = {"QueryResponses": {"Blob": os.urandom(BIG)}}
        refused = await device.acknowledge(command_uuid, **result)
        assert refused.status == 503 and int(refused.headers["retry-after"]) > 0
        assert await full.mdm.rows("SELECT * FROM results WHERE command_uuid = ?", command_uuid) == []
        await full.disk.free()
        resent = await device.acknowledge(command_uuid, **result)
    assert resent.status == 200
    stored = await full.mdm.rows("SELECT status, raw FROM results WHERE command_uuid = ?", command_uuid)
    assert [row["status"] for row in stored] == ["Acknowledged"]
    assert plistlib.loads(stored[0]["raw"])["QueryResponses"] == result["QueryResponses"]


async def test_healthz_metrics_and_status_say_the_disk_is_full_until_a_commit_works_again(full):
    runtime = full.server.runtime
    async with full.server.client() as http, full.server.api_client() as api:
        before = (await http.get("/healthz")).json()
        assert before["status"] != "error" and before["checks"]["store"] == {"status": "ok", "fault": None}
        await (await enrolled(full.mdm)).aclose()
        await full.disk.fill()
        assert_unavailable(await api.put(f"/v1/enqueue/{UDID}", content=big_command(str(uuid.uuid4()))), json=True)
        health = (await http.get("/healthz")).json()
        assert health["status"] == "error"
        assert health["checks"]["store"]["fault"] == "disk_full"
        assert "full" in health["checks"]["store"]["message"]
        metrics = (await api.get("/metrics")).text
        assert "mdm_store_status 2.0" in metrics
        assert 'mdm_store_faults_total{reason="disk_full"} 1.0' in metrics
        assert (await status_line(runtime)).startswith("ERROR: the disk holding the database is full")
        await full.disk.free()
        ok = await api.put(f"/v1/enqueue/{UDID}?nopush=1", content=big_command(str(uuid.uuid4())))
        assert ok.status_code == 200
        health = (await http.get("/healthz")).json()
        metrics = (await api.get("/metrics")).text
    assert health["status"] == before["status"]  # "warning" here: no push certificate in this test
    assert health["checks"]["store"] == {"status": "ok", "fault": None}
    assert "mdm_store_status 0.0" in metrics
    assert "ERROR" not in await status_line(runtime)


async def test_a_scep_request_refused_for_a_full_disk_does_not_spend_its_one_time_challenge(full):
    async with full.server.client() as http, full.server.api_client() as api:
        challenge = (await api.post("/v1/challenges")).json()["challenge"]
        ca = x509.load_der_x509_certificate((await http.get("/scep", params={"operation": "GetCACert"})).content)
        # A large subject: the issued certificate repeats it, so its record needs new pages.
        request = scep_client.pkcs_req(scep_client.Requester(challenge=challenge, extra_subject_bytes=6000), ca)
        await full.disk.fill()
        refused = await http.post(PKI, content=request.der)
        assert_unavailable(refused, json=False)
        unspent = await full.mdm.rows("SELECT used_at FROM scep_challenges")
        assert [row["used_at"] for row in unspent] == [None]
        assert await full.server.runtime.store.read(scep_store.count_issued) == 0
        await full.disk.free()
        resent = await http.post(PKI, content=request.der)
    assert resent.status_code == 200
    assert scep_client.read_cert_rep(resent.content, ca, request).status == 0  # SUCCESS, with the challenge


async def test_every_route_that_writes_answers_503_on_a_full_disk(tmpfs_full):
    full = tmpfs_full
    async with await enrolled(full.mdm) as device, full.server.client() as http, \
            full.server.api_client() as api:
        ca = x509.load_der_x509_certificate((await http.get("/scep", params={"operation": "GetCACert"})).content)
        scep = scep_client.pkcs_req(scep_client.Requester(challenge="test-challenge"), ca)
        push = apns_certs.make_push_cert(apns_certs.make_ca())
        push_pem = push.cert_pem + push.key_pem
        assert (await api.put("/v1/pushcert", content=push_pem)).status_code == 200  # the profile needs a topic
        await full.disk.fill()
        assert_unavailable(await api.put("/v1/pushcert", content=push_pem), json=True)
        assert_unavailable(await http.get("/mdm/enroll", params={"token": "test-enroll-secret"}), json=False)
        assert_unavailable(await api.put(f"/v1/enqueue/{UDID}", content=command_body(str(uuid.uuid4()))),
                           json=True)
        assert_unavailable(await api.post("/v1/commands", json={
            "enrollment_ids": [UDID], "command": {"RequestType": "ProfileList"}}), json=True)
        assert_unavailable(await api.post("/v1/challenges"), json=True)
        assert_unavailable(await http.post(PKI, content=scep.der), json=False)
        async with full.mdm.device("STORAGE-FAULT-NEW-DEVICE") as newcomer:
            replies = [await device.idle(), await device.token_update(), await newcomer.authenticate()]
        for reply in replies:
            assert reply.status == 503 and int(reply.headers["retry-after"]) > 0, reply
            assert "nothing of this request was stored" in reply.text
        await full.disk.free()
        assert (await device.idle()).status == 200
        assert (await api.post("/v1/challenges")).status_code == 201


async def test_the_webhook_worker_waits_out_a_full_disk_instead_of_ending_the_process(tmp_path, nursery):
    receiver = Receiver(port=free_port(), status=500)
    async with Running(receiver):
        mdm, tmpfs = await _full_server(nursery, tmp_path, "tmpfs", webhook={
            "url": f"http://127.0.0.1:{receiver.port}/events", "retry_initial": 0.05, "retry_max": 0.1})
        try:
            store = mdm.server.runtime.store
            async with await enrolled(mdm) as device:
                await receiver.wait_for(lambda: receiver.attempts >= 1)  # the receiver fails: kept, retried
                await tmpfs.fill()
                # The outbox cannot record the next attempt: the worker must pause, not crash the server.
                with trio.fail_after(20):
                    while store.refused["disk_full"] == 0:
                        await trio.sleep(0.05)
                # The DDM notifier, woken with nothing marked, must not commit an empty transaction either
                # (it would end the fault state while device requests still fail).
                ddm = mdm.server.runtime.ddm
                for _ in range(3):
                    ddm.wake()
                    await trio.sleep(0.05)
                    await ddm.idle.wait()
                async with mdm.server.client() as http:
                    assert (await http.get("/healthz")).json()["checks"]["store"]["fault"] == "disk_full"
                await tmpfs.free()
                assert (await device.idle()).status == 200
            assert not mdm.server.finished.is_set()
        finally:
            await mdm.server.aclose()
            tmpfs.unmount()


# --- a job that loses the batch's transaction (the group-commit lie) -------------------------------------

async def test_an_enqueue_sharing_a_batch_with_one_that_fills_the_disk_is_answered_as_stored(tmp_path, nursery):
    """A huge enqueue fails for a full database in the same group commit as a small one queued after it:
    SQLite ends the whole transaction, and the small one must neither reach disk while told it failed (a
    retry would get 409) nor be lost while told it succeeded."""
    mdm = await start_mdm_server(nursery, tmp_path)
    store = mdm.server.runtime.store
    small_uuid, huge_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    token = trio.lowlevel.current_trio_token()
    holding, gate = trio.Event(), threading.Event()
    answers: dict = {}

    def hold(conn):  # the db thread is busy until both enqueues are queued behind it: one batch
        token.run_sync_soon(holding.set)
        gate.wait(30)

    async def enqueue(api, name, body):
        answers[name] = await api.put(f"/v1/enqueue/{UDID}?nopush=1", content=body)

    async with await enrolled(mdm), mdm.server.api_client() as api:
        await PageLimit(store).fill()
        async with trio.open_nursery() as requests:
            requests.start_soon(store.read, hold)
            await holding.wait()
            requests.start_soon(enqueue, api, "huge", big_command(huge_uuid))
            await wait_all_tasks_blocked()
            requests.start_soon(enqueue, api, "small", command_body(small_uuid))
            await wait_all_tasks_blocked()
            gate.set()
        small_stored = (await api.get(f"/v1/commands/{small_uuid}")).status_code == 200
        # Answered 200 and stored, or refused and not stored: never one without the other.
        assert (answers["small"].status_code == 200) == small_stored, (answers["small"].text, small_stored)
        assert answers["small"].status_code in (200, 503), answers["small"].text
        assert_unavailable(answers["huge"], json=True)
        await PageLimit(store).free()
        if not small_stored:
            assert (await api.put(f"/v1/enqueue/{UDID}?nopush=1", content=command_body(small_uuid))).status_code == 200
        assert (await api.put(f"/v1/enqueue/{UDID}?nopush=1", content=big_command(huge_uuid))).status_code == 200
    await mdm.server.aclose()


# --- a lock held by another process ------------------------------------------------------------------------

async def test_a_lock_held_elsewhere_is_answered_503_within_the_busy_timeout_and_nothing_stored(tmp_path, nursery):
    mdm = await start_mdm_server(nursery, tmp_path)
    command_uuid = str(uuid.uuid4())
    async with await enrolled(mdm) as device, mdm.server.api_client() as api:
        other = sqlite3.connect(mdm.server.config.data_dir / "appliance.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # as a CLI command in the middle of its transaction
        try:
            # Waiting the old 30 s would overrun this deadline; the server's own is 2 s.
            with trio.fail_after(20):
                refused = await api.put(f"/v1/enqueue/{UDID}?nopush=1", content=command_body(command_uuid))
                idle = await device.idle()
            assert_unavailable(refused, json=True)
            assert "locked" in refused.json()["error"]["message"]
            assert idle.status == 503 and int(idle.headers["retry-after"]) > 0
            assert (await api.get(f"/v1/commands/{command_uuid}")).status_code == 404  # reads go on
        finally:
            other.execute("ROLLBACK")
            other.close()
        again = await api.put(f"/v1/enqueue/{UDID}?nopush=1", content=command_body(command_uuid))
        assert again.status_code == 200
        assert (await device.idle()).command_uuid == command_uuid
    await mdm.server.aclose()
