"""Console accounts for tests: made through the appliance's own account functions (the CLI's path is
tested on its own in tests/server/test_cli_users.py), and a signed-in httpx client for the console that
reads CSRF tokens out of the served HTML like a browser's form would."""

from __future__ import annotations

import re

import httpx

from appliance.service import accounts
from appliance.store import accounts as account_store

PASSWORDS = {"admin": "admin password 1", "operator": "operator password 1", "viewer": "viewer password 1"}


async def add_users(server, **names_by_role: str) -> None:
    """add_users(server, admin="alice", viewer="victor"): one account per role, password PASSWORDS[role]."""
    rows = [(name, role, accounts.hash_password(PASSWORDS[role])) for role, name in names_by_role.items()]
    await server.runtime.store.write(lambda conn: [account_store.add(conn, *row) for row in rows])


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


class Console:
    def __init__(self, server, base_url: str | None = None) -> None:
        self.client = httpx.AsyncClient(base_url=base_url or server.api_url, verify=server.ssl_context(), timeout=30)

    async def __aenter__(self) -> "Console":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.aclose()

    async def login(self, name: str, password: str) -> httpx.Response:
        page = await self.client.get("/console/login")
        return await self.client.post("/console/login", data={"name": name, "password": password,
                                                              "csrf_token": csrf_of(page.text)})

    async def post_form(self, page_path: str, action: str, data: dict, files=None) -> httpx.Response:
        """Load page_path for its CSRF token, then POST the form to action (as a browser would)."""
        page = await self.client.get(page_path)
        return await self.client.post(action, data={**data, "csrf_token": csrf_of(page.text)}, files=files)

    async def get(self, path: str, **kwargs) -> httpx.Response:
        return await self.client.get(path, **kwargs)
