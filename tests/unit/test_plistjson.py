"""Plist values as JSON and back (the admin API's and the CLI's command and result format)."""

from __future__ import annotations

import plistlib
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.protocol.plistjson import MAX_DEPTH, JsonPlistError, from_json, to_json

XML_TEXT = st.characters(blacklist_categories=("Cs", "Cc"))  # what an XML plist can hold
PLIST_VALUES = st.recursive(
    st.one_of(st.text(alphabet=XML_TEXT), st.integers(-(2**63), 2**63 - 1),
              st.booleans(), st.binary(max_size=64),
              st.floats(allow_nan=False, allow_infinity=False),
              st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1)).map(
                  lambda moment: moment.replace(microsecond=0))),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(XML_TEXT, min_size=1, max_size=8).filter(lambda k: not k.startswith("$")),
                                               children, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(PLIST_VALUES)
def test_round_trip_through_json_and_a_real_plist(value):
    back = from_json(to_json(value))
    assert back == value
    assert plistlib.loads(plistlib.dumps({"v": back}))["v"] == value


def test_markers():
    assert to_json(b"\x00\x01") == {"$data": "AAE="}
    assert to_json(datetime(2026, 5, 1, 12, 0)) == {"$date": "2026-05-01T12:00:00Z"}
    assert from_json({"$date": "2026-05-01T14:00:00+02:00"}) == datetime(2026, 5, 1, 12, 0)


@pytest.mark.parametrize("value, where", [
    ({"a": None}, "a"),
    ({"a": [1, {"b": {"$data": "***"}}]}, "a[1].b"),
    ({"a": {"$data": "AA==", "extra": 1}}, "a"),
    ({"a": {"$date": "yesterday"}}, "a"),
    ({"a": {"$data": 5}}, "a"),
    ({"big": 2**70}, "big"),
    ({"x": float("nan")}, "x"),
    ({"d": {"$date": "0001-01-01T00:00:00+14:00"}}, "d"),  # before year 1 once in UTC
    ({"d": {"$date": "9999-12-31T23:59:59-14:00"}}, "d"),  # after year 9999 once in UTC
])
def test_errors_name_where(value, where):
    with pytest.raises(JsonPlistError, match=rf"^{where.replace('[', '.').replace(']', '.')}"):
        from_json(value)


def _nested(depth: int):
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_nesting_is_bounded_both_ways_not_a_recursion_crash():
    assert from_json({"k": _nested(MAX_DEPTH - 1)}) == {"k": _nested(MAX_DEPTH - 1)}
    for depth in (MAX_DEPTH, 5000):  # 5000: past Python's recursion limit
        with pytest.raises(JsonPlistError, match=r"^k(\[0\])*: nested deeper than"):
            from_json({"k": _nested(depth)})
        with pytest.raises(JsonPlistError, match="nested deeper than"):
            to_json({"k": _nested(depth)})
