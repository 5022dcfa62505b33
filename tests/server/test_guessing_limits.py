"""Guessing limits on the admin API key and the enrollment-profile secret, against the real server: after
N wrong secrets a client gets 429 with Retry-After, even with the right one, until its window has passed;
other clients (behind a trusted proxy: other forwarded addresses) are not affected. The server keeps a
clock the test moves, so nothing sleeps."""

from __future__ import annotations

import re

from appliance.clock import OffsetClock
from tests.support.harness import API_KEY, make_config, start_server

SECRET = "test-enroll-secret"


def bearer(key: str, client: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    if client:
        headers["X-Forwarded-For"] = client
    return headers


def counter(metrics_text: str, name: str, secret: str) -> float:
    found = re.search(rf'^{name}{{secret="{secret}"}} (\S+)$', metrics_text, re.M)
    assert found, f"{name}{{secret={secret}}} missing"
    return float(found.group(1))


async def test_wrong_api_keys_get_the_client_429_even_with_the_right_key_until_the_window_passes(
        tmp_path, nursery):
    config = make_config(tmp_path, api={"key": API_KEY, "key_guess_limit": 3, "key_guess_window": "30s"})
    clock = OffsetClock()
    server = await start_server(nursery, config, clock)
    async with server.client() as http:
        for _ in range(5):  # no credentials at all guess nothing
            assert (await http.get("/v1/devices")).status_code == 401
        for attempt in range(3):
            wrong = await http.get("/v1/devices", headers=bearer(f"wrong-key-{attempt:020d}"))
            assert wrong.status_code == 401
        refused = await http.get("/v1/devices", headers=bearer(API_KEY))
        assert refused.status_code == 429
        wait = int(refused.headers["retry-after"])
        assert 0 < wait <= 30  # counted from the first wrong key; the clock runs on meanwhile
        assert refused.headers["content-type"] == "application/json"
        assert refused.json()["error"]["code"] == "too_many_guesses"
        assert "127.0.0.1" in refused.json()["error"]["message"]
        assert (await http.get("/metrics", auth=("prometheus", API_KEY))).status_code == 429
        clock.advance(15)
        later = await http.get("/v1/devices", headers=bearer(API_KEY))
        assert later.status_code == 429 and 0 < int(later.headers["retry-after"]) <= 15
        clock.advance(16)  # 31 s after the first wrong key
        assert (await http.get("/v1/devices", headers=bearer(API_KEY))).status_code == 200
        metrics = (await http.get("/metrics", headers=bearer(API_KEY))).text
    assert counter(metrics, "mdm_failed_authentications_total", "api_key") == 3
    assert counter(metrics, "mdm_guess_limit_refusals_total", "api_key") == 3
    await server.aclose()


async def test_behind_a_trusted_proxy_a_guesser_does_not_lock_out_the_operator(tmp_path, nursery):
    config = make_config(tmp_path, api={"key": API_KEY, "key_guess_limit": 2},
                         identity={"trusted_proxies": ["127.0.0.1"]})
    server = await start_server(nursery, config)
    async with server.client() as http:
        guesser = "203.0.113.9"
        for attempt in range(2):
            wrong = await http.get("/v1/devices", headers=bearer(f"wrong-key-{attempt:020d}", guesser))
            assert wrong.status_code == 401
        assert (await http.get("/v1/devices", headers=bearer(API_KEY, guesser))).status_code == 429
        # Another client behind the proxy, and the operator on the box itself (no proxy, no header).
        assert (await http.get("/v1/devices", headers=bearer(API_KEY, "198.51.100.7"))).status_code == 200
        assert (await http.get("/v1/devices", headers=bearer(API_KEY))).status_code == 200
        # The guesser claiming another address in front of the proxy's entry changes nothing.
        spoofed = await http.get("/v1/devices", headers=bearer(API_KEY, f"192.0.2.1, {guesser}"))
        assert spoofed.status_code == 429
    await server.aclose()


async def test_wrong_enrollment_secrets_get_the_client_429_until_the_window_passes(tmp_path, nursery):
    config = make_config(tmp_path, enrollment={"secret": SECRET, "scep_challenge": "test-challenge",
                                               "secret_guess_limit": 2, "secret_guess_window": "1m"})
    clock = OffsetClock()
    server = await start_server(nursery, config, clock)
    async with server.client() as http:
        # The secret is accepted: no push certificate yet, so 409 (not 401) says it got past the secret.
        assert (await http.get("/mdm/enroll", params={"token": SECRET})).status_code == 409
        for _ in range(3):  # a browser's first request, before it shows the password prompt
            assert (await http.get("/mdm/enroll")).status_code == 401
        assert (await http.get("/mdm/enroll", params={"token": "guess-1"})).status_code == 401
        assert (await http.get("/mdm/enroll", auth=("anyone", "guess-2"))).status_code == 401
        refused = await http.get("/mdm/enroll", params={"token": SECRET})
        assert refused.status_code == 429
        assert 0 < int(refused.headers["retry-after"]) <= 60
        assert refused.headers["content-type"].startswith("text/plain")
        assert "too many wrong enrollment secrets" in refused.text
        clock.advance(60)
        assert (await http.get("/mdm/enroll", params={"token": SECRET})).status_code == 409
    async with server.api_client() as api:
        metrics = (await api.get("/metrics")).text
    assert counter(metrics, "mdm_failed_authentications_total", "enrollment_secret") == 2
    assert counter(metrics, "mdm_guess_limit_refusals_total", "enrollment_secret") == 1
    await server.aclose()
