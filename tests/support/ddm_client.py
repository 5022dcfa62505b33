"""A Declarative Device Management client, written from Apple's protocol documents (apple/device-management:
mdm/checkin/declarativemanagement.yaml, declarative/protocol/*.yaml), using nothing of the appliance: the
check-ins go through the device simulator as plists (plistlib turns Data into base64), JSON is read and
written with the json module.

    client = DdmClient(device)                       # device: an enrolled tests.support.device_sim.DeviceSim
    synced = await client.sync()                     # tokens -> declaration-items -> each new or changed declaration
    client.declarations["my.passcode"]["Payload"]    # what the device now holds
    await client.follow(command)                     # a DeclarativeManagement command: sync if its tokens are new
    await client.report_status()                     # a status report of what it holds (all active and valid)

Like a device, it keeps what it synced (its declarations by Identifier and the DeclarationsToken) and only
fetches a declaration whose ServerToken it does not have. Protocol checks a device would rely on are
asserted here (JSON answers, all four manifest arrays, equal tokens from `tokens` and `declaration-items`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tests.support.device_sim import DeviceSim, Reply

MANIFESTS = {"Activations": "activation", "Configurations": "configuration", "Assets": "asset",
             "Management": "management"}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


@dataclass
class SyncResult:
    token: str
    timestamp: str
    fetched: list[str] = field(default_factory=list)   # identifiers fetched in this sync
    removed: list[str] = field(default_factory=list)


class DdmClient:
    def __init__(self, device: DeviceSim) -> None:
        self.device = device
        self.token: str | None = None
        self.declarations: dict[str, dict[str, Any]] = {}  # identifier -> the declaration as fetched
        self.kinds: dict[str, str] = {}                     # identifier -> manifest kind

    async def request(self, endpoint: str, data: bytes | None = None) -> Reply:
        keys: dict[str, Any] = {"Endpoint": endpoint}
        if data is not None:
            keys["Data"] = data
        return await self.device.checkin("DeclarativeManagement", **keys)

    async def _json(self, endpoint: str) -> dict:
        reply = await self.request(endpoint)
        assert reply.status == 200, (endpoint, reply.status, reply.text)
        assert reply.content_type is not None and reply.content_type.startswith("application/json"), reply.headers
        return json.loads(reply.body)

    async def tokens(self) -> dict:
        answer = await self._json("tokens")
        sync = answer["SyncTokens"]
        assert isinstance(sync["DeclarationsToken"], str) and sync["DeclarationsToken"]
        assert TIMESTAMP.match(sync["Timestamp"]), sync["Timestamp"]
        return sync

    async def declaration_items(self) -> dict:
        answer = await self._json("declaration-items")
        manifest = answer["Declarations"]
        assert set(manifest) == set(MANIFESTS), manifest.keys()  # all four, always
        for entries in manifest.values():
            for entry in entries:
                assert set(entry) == {"Identifier", "ServerToken"}, entry
        return answer

    async def declaration(self, kind: str, identifier: str) -> Reply:
        return await self.request(f"declaration/{kind}/{identifier}")

    async def sync(self, tokens: dict | None = None) -> SyncResult:
        """Apple's synchronization: compare DeclarationsToken, then fetch the manifest and what changed."""
        tokens = tokens or await self.tokens()
        result = SyncResult(tokens["DeclarationsToken"], tokens["Timestamp"])
        if tokens["DeclarationsToken"] == self.token:
            return result
        items = await self.declaration_items()
        assert items["DeclarationsToken"] == tokens["DeclarationsToken"], (items["DeclarationsToken"], tokens)
        seen = set()
        for array, kind in MANIFESTS.items():
            for entry in items["Declarations"][array]:
                identifier = entry["Identifier"]
                seen.add(identifier)
                held = self.declarations.get(identifier)
                if held is not None and held["ServerToken"] == entry["ServerToken"]:
                    continue
                reply = await self.declaration(kind, identifier)
                assert reply.status == 200, (identifier, reply.status, reply.text)
                assert reply.content_type.startswith("application/json")
                declaration = json.loads(reply.body)
                assert declaration["Identifier"] == identifier
                assert declaration["ServerToken"] == entry["ServerToken"]
                assert declaration["Type"].split(".")[2] == kind
                assert isinstance(declaration["Payload"], dict)
                self.declarations[identifier] = declaration
                self.kinds[identifier] = kind
                result.fetched.append(identifier)
        for identifier in list(self.declarations):
            if identifier not in seen:
                del self.declarations[identifier]
                del self.kinds[identifier]
                result.removed.append(identifier)
        self.token = tokens["DeclarationsToken"]
        return result

    async def follow(self, command: dict) -> SyncResult:
        """A DeclarativeManagement command: its Data (if any) holds the tokens; sync when they are new."""
        assert command["Command"]["RequestType"] == "DeclarativeManagement"
        data = command["Command"].get("Data")
        tokens = json.loads(data)["SyncTokens"] if data is not None else None
        return await self.sync(tokens)

    def status_report(self, *, invalid: dict[str, str] | None = None, values: dict | None = None,
                      errors: list | None = None, full: bool = True) -> dict:
        """A status report of the held declarations: each active and valid, except those in `invalid`
        (identifier -> reason code), which are inactive and invalid."""
        invalid = invalid or {}
        arrays: dict[str, list] = {"activations": [], "configurations": [], "assets": [], "management": []}
        for identifier, declaration in self.declarations.items():
            entry: dict[str, Any] = {"identifier": identifier, "server-token": declaration["ServerToken"],
                                     "active": identifier not in invalid,
                                     "valid": "invalid" if identifier in invalid else "valid"}
            if identifier in invalid:
                entry["reasons"] = [{"code": invalid[identifier], "description": "simulated",
                                     "details": {"Identifier": identifier}}]
            kind = self.kinds[identifier]
            arrays["management" if kind == "management" else kind + "s"].append(entry)
        items: dict[str, Any] = {"management": {"declarations": arrays,
                                                "client-capabilities": {"supported-versions": ["1.0.0"]}}}
        for path, value in (values or {}).items():
            node = items
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return {"StatusItems": items, "Errors": errors or [], "FullReport": full}

    async def report_status(self, report: dict | None = None) -> Reply:
        return await self.request("status", json.dumps(report or self.status_report()).encode())
