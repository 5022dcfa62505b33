"""Shared by the DDM tests: the real server trusting a test device CA and pushing to the APNs stand-in (push
certificate imported), declarations as plain dicts put through the KMFDDM-compatible API, and waits for the
notifier and the stand-in (with deadlines, never timed assertions)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import trio

from appliance.clock import SYSTEM, Clock
from tests.support.apns_standin import StandIn
from tests.support.device_sim import DeviceSim
from tests.support.mdm_support import MdmServer, start_mdm_server
from tests.support.push_support import start_apns_standin

API = "/api/v1/ddm"


@dataclass
class DdmServer:
    mdm: MdmServer
    standin: StandIn | None

    @property
    def server(self):
        return self.mdm.server

    def api(self):
        return self.server.api_client()

    def device(self, udid: str, **kwargs) -> DeviceSim:
        return self.mdm.device(udid, **kwargs)

    async def rows(self, sql: str, *args) -> list[dict]:
        return await self.mdm.rows(sql, *args)

    async def settled(self, timeout: float = 10) -> None:
        await notifier_settled(self.rows, timeout)

    async def pushes_to(self, device: DeviceSim, count: int, timeout: float = 10) -> None:
        """Wait until the stand-in has seen `count` pushes to this device's token."""
        token = device.push_token.hex()
        with trio.fail_after(timeout):
            while sum(1 for r in self.standin.requests if r.token == token) < count:
                await trio.sleep(0.02)

    async def pending_ddm_commands(self, enrollment_id: str) -> list[dict]:
        return await self.rows(
            "SELECT q.command_uuid, q.sent_at, c.body FROM queue q JOIN commands c ON c.uuid = q.command_uuid "
            "WHERE q.enrollment_id = ? AND c.request_type = 'DeclarativeManagement' AND q.cancelled_at IS NULL",
            enrollment_id)


async def notifier_settled(rows, timeout: float = 10) -> None:
    """Every group membership change has been followed and every marked enrollment dealt with by the DDM
    notifier (its transaction committed). rows: a server's rows(sql) reader."""
    with trio.fail_after(timeout):
        while (await rows(
                "SELECT (SELECT count(*) FROM ddm_dirty) AS dirty, (SELECT coalesce(max(id), 0) FROM "
                "group_changes) > (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'ddm_group_change_id') "
                "AS behind"))[0] != {"dirty": 0, "behind": 0}:
            await trio.sleep(0.02)


async def start_ddm_server(nursery, tmp_path: Path, *, apns: bool = True, clock: Clock = SYSTEM,
                           **overrides) -> DdmServer:
    stand_in = await start_apns_standin(nursery, tmp_path) if apns else None
    if stand_in is not None:
        overrides["apns"] = {**stand_in.apns, **overrides.get("apns", {})}
    mdm = await start_mdm_server(nursery, tmp_path, clock=clock, **overrides)
    if stand_in is not None:
        await stand_in.import_push_cert(mdm.server)
    return DdmServer(mdm, stand_in.standin if stand_in else None)


def configuration(identifier: str, declaration_type: str = "com.apple.configuration.management.test",
                  **payload) -> dict:
    return {"Type": declaration_type, "Identifier": identifier, "Payload": payload or {"Echo": identifier}}


def activation(identifier: str, *configurations: str) -> dict:
    return {"Type": "com.apple.activation.simple", "Identifier": identifier,
            "Payload": {"StandardConfigurations": list(configurations)}}


async def put(api, declaration: dict, **params):
    return await api.put(f"{API}/declarations", content=json.dumps(declaration), params=params)


async def setup_set(api, set_name: str, declarations: list[dict], enrollment_ids: list[str]) -> None:
    """Declarations stored, put in the set, the set assigned: each answered as a change (204)."""
    for declaration in declarations:
        answer = await put(api, declaration)
        assert answer.status_code == 204, answer.text
        answer = await api.put(f"{API}/set-declarations/{set_name}", params={"declaration": declaration["Identifier"]})
        assert answer.status_code == 204, answer.text
    for eid in enrollment_ids:
        answer = await api.put(f"{API}/enrollment-sets/{eid}", params={"set": set_name})
        assert answer.status_code == 204, answer.text
