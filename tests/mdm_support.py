"""Shared pieces of the MDM protocol tests: a server that trusts a test device CA, enqueueing through the
store API (until the admin API is the way in), and a full dump of the database for before/after checks."""

from __future__ import annotations

import plistlib
from dataclasses import dataclass
from pathlib import Path

from appliance.store import queue
from tests.device_sim import DeviceSim, TestCA
from tests.harness import Server, make_config, start_server


@dataclass
class MdmServer:
    server: Server
    ca: TestCA

    def device(self, udid: str, *, key_type: str = "rsa", **kwargs) -> DeviceSim:
        cert, key = self.ca.issue(udid, key_type=key_type)
        return DeviceSim(self.server.base_url, self.server.ssl_context(), cert, key, udid, **kwargs)

    async def enqueue(self, command_uuid: str, enrollment_ids: list[str], request_type: str = "DeviceInformation",
                      **keys) -> bytes:
        body = command_body(command_uuid, request_type, **keys)
        outcome = await self.server.runtime.store.write(queue.enqueue, command_uuid, request_type, body,
                                                        enrollment_ids)
        assert all(error is None for error in outcome.values()), outcome
        return body

    async def dump(self) -> str:
        return await self.server.runtime.store.read(lambda conn: "\n".join(conn.iterdump()))

    async def rows(self, sql: str, *args) -> list[dict]:
        return await self.server.runtime.store.read(
            lambda conn: [dict(row) for row in conn.execute(sql, args).fetchall()])


def command_body(command_uuid: str, request_type: str = "DeviceInformation", **keys) -> bytes:
    return plistlib.dumps({"CommandUUID": command_uuid, "Command": {"RequestType": request_type, **keys}})


async def start_mdm_server(nursery, tmp_path: Path, **overrides: dict) -> MdmServer:
    ca = TestCA("MDM Test Device CA", directory=tmp_path)
    identity = {"trusted_ca_files": [str(ca.pem_path)], **overrides.pop("identity", {})}
    config = make_config(tmp_path, identity=identity, **overrides)
    return MdmServer(await start_server(nursery, config), ca)
