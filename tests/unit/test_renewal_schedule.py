"""When renewal begins and how long attempts are given (appliance/protocol/renewal.py), and which bound
certificates the store finds due (appliance/store/renewal.py), on a real SQLite file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from appliance.protocol.renewal import renewal_starts, retry_after
from appliance.store import bindings
from appliance.store import renewal as renewal_store
from appliance.store.db import connect_sync
from appliance.store.timefmt import to_text

START = datetime(2026, 1, 1, tzinfo=UTC)
THIRTY_DAYS = timedelta(days=30)
OUR_CA = "CN=Example appliance CA,O=Example"


def test_a_year_long_identity_renews_thirty_days_before_it_ends():
    assert renewal_starts(START, START + timedelta(days=365), THIRTY_DAYS) == START + timedelta(days=335)


def test_a_short_lived_identity_renews_half_way_so_it_never_loops():
    one_day = START + timedelta(days=1)
    assert renewal_starts(START, one_day, THIRTY_DAYS) == START + timedelta(hours=12)
    # and its successor, issued then, again half way through its own life
    assert renewal_starts(START + timedelta(hours=12), one_day + timedelta(hours=12), THIRTY_DAYS) == one_day


def test_attempts_wait_longer_each_time_up_to_the_cap():
    waits = [retry_after(n, timedelta(hours=1), timedelta(hours=24)) for n in range(1, 8)]
    assert waits == [timedelta(hours=h) for h in (1, 2, 4, 8, 16, 24, 24)]
    assert retry_after(10_000, timedelta(hours=1), timedelta(hours=24)) == timedelta(hours=24)
    with pytest.raises(ValueError):
        retry_after(0, timedelta(hours=1), timedelta(hours=24))


@pytest.fixture
def conn(tmp_path):
    connection = connect_sync(tmp_path / "renewal.db")
    yield connection
    connection.close()


def _device(conn, device_id: str, *, not_after: datetime, issuer: str | None, not_before: datetime | None = START,
            active: int = 1, subject: str | None = None) -> None:
    now = to_text(START)
    conn.execute("INSERT INTO devices (id, created_at, updated_at) VALUES (?, ?, ?)", (device_id, now, now))
    conn.execute("INSERT INTO enrollments (id, device_id, type, active, created_at, updated_at)"
                 " VALUES (?, ?, 'Device', ?, ?, ?)", (device_id, device_id, active, now, now))
    bindings.bind(conn, device_id, f"sha-{device_id}", subject or f"CN={device_id}", to_text(not_after),
                  to_text(not_before) if not_before else None, issuer)


def test_due_identities_are_ours_active_and_within_the_window(conn):
    now = START + timedelta(days=340)
    horizon = to_text(now + THIRTY_DAYS)
    _device(conn, "OURS-DUE", not_after=START + timedelta(days=365), issuer=OUR_CA)
    _device(conn, "OURS-LATER", not_after=START + timedelta(days=400), issuer=OUR_CA)
    _device(conn, "FOREIGN", not_after=START + timedelta(days=365), issuer="CN=Another CA")
    _device(conn, "CHECKED-OUT", not_after=START + timedelta(days=365), issuer=OUR_CA, active=0)
    # Bound before issuer and not_before were recorded: recognized by the CA's own issuing record.
    _device(conn, "LEGACY", not_after=START + timedelta(days=366), issuer=None, not_before=None,
            subject="CN=LEGACY,O=Example")
    conn.execute("INSERT INTO scep_certificates (serial, subject, not_after, transaction_id, message_type,"
                 " csr_sha256, certificate, issued_at) VALUES ('1f', 'CN=LEGACY,O=Example', ?, 'T', 19, x'00',"
                 " x'00', ?)", (to_text(START + timedelta(days=366)), to_text(START)))
    due = renewal_store.due(conn, OUR_CA, horizon, to_text(now))
    assert [(row["device_id"], row["not_before"]) for row in due] == [
        ("OURS-DUE", to_text(START)), ("LEGACY", to_text(START))]
    states = renewal_store.state_counts(conn, OUR_CA)
    assert states == {"scheduled": 3, "not_renewable": 1}  # the checked-out device is not counted
    facts = renewal_store.facts(conn, OUR_CA, ["FOREIGN", "LEGACY", "NOBODY"])
    assert {device: f["state"] for device, f in facts.items()} == {"FOREIGN": "not_renewable", "LEGACY": "scheduled"}
