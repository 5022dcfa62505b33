"""The console's device query (appliance/store/device_search.py) on a real SQLite file seeded with plain SQL."""

from __future__ import annotations

import pytest

from appliance.store.db import connect_sync
from appliance.store.device_search import DeviceQuery, matching_ids, os_version_key, search
from tests.support.fleet_seed import seed_devices


@pytest.fixture
def conn(tmp_path):
    conn = connect_sync(tmp_path / "a.db")
    seed_devices(conn, 120)
    seed_devices(conn, 5, start=500, active=False)
    conn.execute("UPDATE devices SET os_version = '9.3.5' WHERE serial_number = 'SER000007'")
    conn.execute("UPDATE devices SET os_version = '15.10' WHERE serial_number = 'SER000008'")
    conn.execute("UPDATE enrollments SET last_seen_at = '2026-02-0' || (rowid % 9 + 1) || 'T00:00:00.000000Z'")
    yield conn
    conn.close()


def all_pages(conn, **options) -> list[dict]:
    rows, after = [], None
    while True:
        page = search(conn, DeviceQuery(after=after, limit=17, **options))
        rows += page.devices
        if page.next_after is None:
            return rows
        after = page.next_after


@pytest.mark.parametrize("sort", ["name", "serial", "model", "os", "last_seen"])
@pytest.mark.parametrize("descending", [False, True])
def test_keyset_pages_cover_every_device_once_in_order(conn, sort, descending):
    rows = all_pages(conn, sort=sort, descending=descending)
    assert len(rows) == 125 and len({row["id"] for row in rows}) == 125
    keys = [(row["sort_key"], row["id"]) for row in rows]
    assert keys == sorted(keys, reverse=descending)


def test_text_search_matches_name_serial_udid_any_case(conn):
    assert [d["serial_number"] for d in search(conn, DeviceQuery(text="ser000042")).devices] == ["SER000042"]
    assert search(conn, DeviceQuery(text="mac 1")).total == 1 + 10 + 20  # Mac 1, Mac 10-19, Mac 100-119
    assert search(conn, DeviceQuery(text="0000002A-0000")).devices[0]["serial_number"] == "SER000042"
    assert search(conn, DeviceQuery(text="no such thing")).total == 0


def test_state_filter_and_total(conn):
    page = search(conn, DeviceQuery(state="inactive"))
    assert page.total == 5 and all(not d["active"] for d in page.devices)
    assert search(conn, DeviceQuery(state="active")).total == 120
    assert len(matching_ids(conn, DeviceQuery(state="inactive"))) == 5


def test_os_versions_sort_as_versions_not_text(conn):
    assert os_version_key("9.3.5") < os_version_key("15.1") < os_version_key("15.10")
    rows = all_pages(conn, sort="os")
    assert rows[0]["os_version"] == "9.3.5" and rows[-1]["os_version"] == "15.10"


def test_bad_state_or_sort_is_refused():
    with pytest.raises(ValueError):
        DeviceQuery(sort="password_hash")
    with pytest.raises(ValueError):
        DeviceQuery(state="everything")
