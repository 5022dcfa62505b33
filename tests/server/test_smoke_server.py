from tests.support.harness import API_KEY
from tests.support.project import pyproject_version


async def test_healthz_answers_over_tls_once_ready(server):
    async with server.client() as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["checks"]["devices"] == {"status": "ok", "devices": 0, "active": 0}
    # A fresh appliance has no push certificate yet: up and serving, but not healthy for devices.
    assert body["checks"]["push"]["state"] == "missing"
    assert body["status"] == "warning"
    assert body["version"] == pyproject_version()


async def test_unknown_path_is_404_text_and_unknown_api_path_is_json(server):
    async with server.client() as client:
        plain = await client.get("/no/such/thing")
        api = await client.get("/v1/no/such/thing", headers={"Authorization": f"Bearer {API_KEY}"})
    assert plain.status_code == 404 and plain.headers["content-type"].startswith("text/plain")
    assert api.status_code == 404
    assert api.json()["error"]["code"] == "not_found"
