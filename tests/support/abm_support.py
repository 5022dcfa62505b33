"""Helpers for the ABM/ADE server tests: an appliance pointed at a DEP simulator, an ABM server entry made
and given its token through the admin API, and waiting for the sync worker to get somewhere."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.support.dep_sim import DepSim
from tests.support.harness import Server, make_config, start_server


async def start_sim(nursery, sim: DepSim) -> str:
    return await nursery.start(sim.run)


async def abm_appliance(nursery, tmp_path: Path, sim_url: str, clock=None, **sections) -> Server:
    abm = {"api_url": sim_url, "sync_interval": "1h", "page_size": 500, "request_timeout": "10s",
           **sections.pop("abm", {})}
    config = make_config(tmp_path, abm=abm, **sections)
    if clock is None:
        return await start_server(nursery, config)
    return await start_server(nursery, config, clock)


async def connect(server: Server, sim: DepSim, name: str, *, cipher: str = "aes256") -> dict:
    """`abm keypair NAME` then `abm token import NAME FILE`, over the admin API; returns the token answer."""
    async with server.api_client() as api:
        made = await api.post(f"/v1/abm/servers/{name}")
        assert made.status_code == 201, made.text
        token_file = sim.token_file(name, made.json()["certificate"].encode(), cipher=cipher)
        imported = await api.put(f"/v1/abm/servers/{name}/token", content=token_file)
        assert imported.status_code == 200, imported.text
        return imported.json()


async def server_state(server: Server, name: str) -> dict:
    async with server.api_client() as api:
        answer = await api.get(f"/v1/abm/servers/{name}")
        assert answer.status_code == 200, answer.text
        return answer.json()


async def wait_for_state(server: Server, name: str, predicate, timeout: float = 60) -> dict:
    """Poll the server entry until predicate(state) holds (the worker runs on its own)."""
    with trio.fail_after(timeout):
        while True:
            state = await server_state(server, name)
            if predicate(state):
                return state
            await trio.sleep(0.05)


async def abm_devices(appliance: Server, **params) -> list[dict]:
    """Every ABM device (all pages); params: server, state, serial, enrolled."""
    found, cursor = [], None
    async with appliance.api_client() as api:
        while True:
            answer = await api.get("/v1/abm/devices", params={**params, "limit": 1000,
                                                              **({"cursor": cursor} if cursor else {})})
            assert answer.status_code == 200, answer.text
            page = answer.json()
            found.extend(page["devices"])
            cursor = page["next_cursor"]
            if cursor is None:
                return found
