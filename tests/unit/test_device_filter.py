"""The device filter language (appliance.store.device_filter): what it means, run on a real SQLite file
seeded with plain SQL, and what it refuses, with the position of the mistake. Hostile text never reaches
SQL as anything but a bound parameter."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.store import device_filter
from appliance.store.db import connect_sync
from appliance.store.device_filter import MAX_CONDITIONS, MAX_DEPTH, MAX_LENGTH, FilterError, parse

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
T = "T00:00:00.000000Z"

# id, name, serial, model, model_name, os_version, last_seen, supervised, battery, capacity, apps
DEVICES = [
    ("D1", "Lab iPad 1", "SER001", "iPad13,18", "iPad", "17.9", "2026-05-31" + T, 1, 0.15, 64.0, ["com.google.Chrome"]),
    ("D2", "Lab iPad 2", "SER002", "iPad13,18", "iPad", "17.10", "2026-03-01" + T, 1, 0.90, 64.0, []),
    ("D3", "Anna's Mac", "SER003", "Mac14,2", "MacBook Air", "14.4.1", "2026-05-30" + T, 0, 0.50, 256.0,
     ["us.zoom.xos", "com.google.Chrome"]),
    ("D4", "Élodie's iPhone", "SER004", "iPhone15,2", "iPhone", "17.4", None, None, None, None, []),
    ("D5", None, "SER005", "iPad7,5", "iPad", "9.3.5", "2026-05-01" + T, 0, None, 32.0, []),
]


@pytest.fixture(scope="module")
def conn(tmp_path_factory):
    conn = connect_sync(tmp_path_factory.mktemp("filter") / "f.db")
    for (device, name, serial, model, model_name, os, seen, supervised, battery, capacity, apps) in DEVICES:
        conn.execute("INSERT INTO devices (id, device_name, serial_number, model, model_name, os_version,"
                     " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'x', 'x')",
                     (device, name, serial, model, model_name, os))
        conn.execute("INSERT INTO enrollments (id, device_id, type, active, last_seen_at, created_at, updated_at)"
                     " VALUES (?, ?, 'Device', ?, ?, 'x', 'x')", (device, device, int(seen is not None), seen))
        if supervised is not None:
            conn.execute("INSERT INTO device_inventory (device_id, supervised, battery_level, device_capacity)"
                         " VALUES (?, ?, ?, ?)", (device, supervised, battery, capacity))
        for app in apps:
            conn.execute("INSERT INTO device_applications (device_id, identifier, name) VALUES (?, ?, ?)",
                         (device, app, app.rsplit(".", 1)[-1].title()))
    conn.execute("INSERT INTO device_groups (name, kind, created_at, updated_at) VALUES ('lab', 'static', 'x', 'x')")
    conn.executemany("INSERT INTO group_members (group_name, device_id, added_at) VALUES ('lab', ?, 'x')",
                     [("D1",), ("D2",)])
    device_filter.prepare(conn)
    yield conn
    conn.close()


def matching(conn, text: str) -> list[str]:
    sql = device_filter.compile_sql(parse(text), now=NOW)
    return [row[0] for row in conn.execute(
        f"SELECT d.id {device_filter.SOURCE} WHERE {sql.where} ORDER BY d.id", sql.params)]


def test_os_versions_compare_as_versions(conn):
    assert matching(conn, 'os_version > "17.9"') == ["D2"]           # 17.10 is newer than 17.9
    assert matching(conn, "os_version < 17.5") == ["D3", "D4", "D5"]  # 9.3.5 is older than 17.5
    assert matching(conn, "os_version >= 17.9") == ["D1", "D2"]
    assert matching(conn, 'os_version startswith "17."') == ["D1", "D2", "D4"]
    assert device_filter.version_key("17.10") > device_filter.version_key("17.9")


def test_the_issue_example_and_text_matching_ignores_case(conn):
    assert matching(conn, 'os_version < "17.10" and model_name contains "IPAD"') == ["D1", "D5"]
    assert matching(conn, "serial = ser003") == ["D3"]
    assert matching(conn, "name startswith 'lab'") == ["D1", "D2"]
    assert matching(conn, 'model in ("iPad13,18", "Mac14,2")') == ["D1", "D2", "D3"]
    assert matching(conn, "name contains \"'s\"") == ["D3", "D4"]


def test_a_missing_fact_never_matches_and_not_of_it_does(conn):
    assert matching(conn, "name contains x") == []
    assert matching(conn, "not name contains x") == ["D1", "D2", "D3", "D4", "D5"]
    assert matching(conn, "battery < 20") == ["D1"]
    assert matching(conn, "not battery < 20") == ["D2", "D3", "D4", "D5"]
    assert matching(conn, "name is null") == ["D5"]
    assert matching(conn, "supervised is not null and not supervised = true") == ["D3", "D5"]


def test_booleans_numbers_times_groups_and_apps(conn):
    assert matching(conn, "supervised = yes") == ["D1", "D2"]
    assert matching(conn, "capacity >= 64 and capacity < 256") == ["D1", "D2"]
    assert matching(conn, "last_seen < 30d ago") == ["D2", "D5"]   # D4 was never seen: no match
    assert matching(conn, "last_seen >= 2026-05-30") == ["D1", "D3"]
    assert matching(conn, 'last_seen > "2026-05-30T12:00:00Z"') == ["D1"]
    assert matching(conn, "group = lab") == ["D1", "D2"]
    assert matching(conn, "group = LAB or os_version < 10") == ["D1", "D2", "D5"]
    assert matching(conn, "group != lab and active = true") == ["D3", "D5"]
    assert matching(conn, 'app = "com.google.Chrome"') == ["D1", "D3"]
    assert matching(conn, "app contains zoom") == ["D3"]
    assert matching(conn, "(app = com.google.Chrome or supervised = true) and not app contains zoom") == ["D1", "D2"]


@pytest.mark.parametrize("hostile", [
    "name = \"x' OR 1=1 --\"",
    "name = 'x\"; DROP TABLE devices; --'",
    "serial in ('a', 'b); DELETE FROM devices; --')",
    "app contains \"%' UNION SELECT sql FROM sqlite_master --\"",
    "group = \"lab') OR ('1'='1\"",
])
def test_hostile_values_are_only_ever_parameters(conn, hostile):
    assert matching(conn, hostile) == []
    assert conn.execute("SELECT count(*) FROM devices").fetchone()[0] == len(DEVICES)


@pytest.mark.parametrize("text, position, words", [
    ('os_version < "17.5', 14, "never closed"),
    ("os_vresion < 17", 1, "did you mean os_version"),
    ("password_hash = x", 1, "unknown field"),
    ("name ~ x", 6, "'~'"),
    ("name < x", 6, "name is text"),
    ("supervised = maybe", 14, "true or false"),
    ("battery < lots", 11, "takes a number"),
    ("last_seen < 30 days", 13, "date"),
    ("last_seen < 30d", 16, "expected 'ago'"),
    ("name = x and", 13, "field name"),
    ("(name = x", 10, "expected ')'"),
    ("name = x) or y = 1", 9, "end of the filter"),
    ("name in ()", 10, "value"),
    ("name in (a b)", 12, "',' or ')'"),
    ("name = x\x00", 9, "U+0000"),
    ("   ", 1, "empty"),
    ("name is nothing", 9, "'null'"),
    ("name contains ''", 15, "needs some text"),
    ("battery > 1e999", 11, "takes a number"),
])
def test_mistakes_are_refused_with_their_position(text, position, words):
    with pytest.raises(FilterError) as caught:
        parse(text)
    assert caught.value.position == position, str(caught.value)
    assert words in str(caught.value)
    assert f"at position {position}" in str(caught.value)


def test_limits_on_length_depth_and_size():
    with pytest.raises(FilterError, match="longer than"):
        parse("name = " + "x" * MAX_LENGTH)
    with pytest.raises(FilterError, match="nests deeper"):
        parse("(" * (MAX_DEPTH + 1) + "name = x" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(FilterError, match="nests deeper"):
        parse("not " * (MAX_DEPTH + 1) + "name = x")
    parse("(" * (MAX_DEPTH - 1) + "name = x" + ")" * (MAX_DEPTH - 1))
    with pytest.raises(FilterError, match="more than"):
        parse(" or ".join(["name = x"] * (MAX_CONDITIONS + 1)))
    with pytest.raises(FilterError, match="more than 100 values"):
        parse("name in (" + ", ".join(["x"] * 101) + ")")


def test_dynamic_groups_refuse_facts_that_change_by_themselves():
    for text in ("last_seen < 7d ago", "active = true", "group = lab", "name = x and enrolled_at > 2026-01-01"):
        with pytest.raises(FilterError, match="dynamic group"):
            parse(text, for_group=True)
    parse('os_version < "17.5" and model_name contains "iPad"', for_group=True)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(list("()'\",<>=! \\\t0179.dxyz_-\x00é") + [
    "name", "os_version", "group", "app", "last_seen", "battery", "30d", "ago", "and", "or", "not", "in", "is",
    "null", "contains", "startswith", " "]), max_size=40).map("".join))
def test_any_text_parses_or_is_refused_cleanly_and_compiles_to_runnable_sql(conn, text):
    try:
        parsed = parse(text)
    except FilterError as exc:
        assert 1 <= exc.position <= len(text) + 1
        return
    sql = device_filter.compile_sql(parsed, now=NOW)
    assert sql.where.count("?") == len(sql.params)
    conn.execute(f"SELECT count(*) {device_filter.SOURCE} WHERE {sql.where}", sql.params).fetchone()


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_CONDITIONS = st.one_of(
    st.tuples(st.sampled_from(["name", "serial", "model_name", "udid"]), st.sampled_from(["=", "!=", "contains"]),
              st.text(min_size=1, max_size=12)).map(lambda c: f"{c[0]} {c[1]} {_quoted(c[2])}"),
    st.tuples(st.sampled_from(["<", "<=", ">", ">=", "="]),
              st.from_regex(r"[0-9]{1,2}(\.[0-9]{1,2}){0,2}", fullmatch=True)).map(lambda c: f"os_version {c[0]} {c[1]}"),
    st.tuples(st.sampled_from(["battery", "capacity"]), st.sampled_from(["<", ">="]),
              st.integers(-1000, 1000)).map(lambda c: f"{c[0]} {c[1]} {c[2]}"),
    st.tuples(st.sampled_from(["last_seen", "last_inventory"]), st.integers(0, 999),
              st.sampled_from("smhdw")).map(lambda c: f"{c[0]} < {c[1]}{c[2]} ago"),
    st.sampled_from(["supervised = true", "group = lab", "app = com.google.Chrome", "name is null"]),
)


@st.composite
def _filters(draw, depth=0):
    if depth >= 3 or draw(st.booleans()):
        return draw(_CONDITIONS)
    joiner = draw(st.sampled_from([" and ", " or "]))
    parts = [draw(_filters(depth + 1)) for _ in range(draw(st.integers(2, 3)))]
    text = "(" + joiner.join(parts) + ")"
    return ("not " + text) if draw(st.booleans()) else text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_filters())
def test_every_well_formed_filter_runs_and_not_is_its_complement(conn, text):
    everyone = set(matching(conn, "udid startswith D"))
    chosen = set(matching(conn, text))
    assert chosen | set(matching(conn, f"not ({text})")) == everyone
    assert not chosen & set(matching(conn, f"not ({text})"))
