"""appliance.protocol.plist: one codec that turns every hostile input into PlistError."""

from __future__ import annotations

import plistlib

import pytest
from hypothesis import given, settings, strategies as st

from appliance.protocol import plist


def test_round_trip_keeps_key_order():
    data = plist.dump({"b": 1, "a": b"\x00", "c": [True, "x"]})
    assert data.startswith(b"<?xml")
    assert list(plist.load_dict(data)) == ["b", "a", "c"]


def test_binary_plists_load():
    assert plist.load_dict(plistlib.dumps({"k": "v"}, fmt=plistlib.FMT_BINARY)) == {"k": "v"}


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"hello", "not a property list"),
    (b"<?xml version='1.0'?><plist><dict><key>a</key>", "not a property list"),
    (b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x "y">]><plist><string>&x;</string></plist>', "not a property list"),
    (b"bplist00" + b"\xff" * 40, "not a property list"),
])
def test_garbage_is_a_plist_error(data, reason):
    with pytest.raises(plist.PlistError, match=reason):
        plist.load(data)


def test_top_level_must_be_a_dictionary():
    with pytest.raises(plist.PlistError, match="must be a dictionary, got an array"):
        plist.load_dict(plistlib.dumps(["x"]))


def test_size_limit():
    with pytest.raises(plist.PlistTooLarge):
        plist.load(plistlib.dumps({"k": "v" * 100}), max_size=50)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_other_errors(data):
    try:
        plist.load(data)
    except plist.PlistError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_mutated_binary_plists_never_escape(tail):
    data = plistlib.dumps({"UDID": "x", "Status": "Idle", "L": [1, 2.5, b"d"]}, fmt=plistlib.FMT_BINARY)
    try:
        plist.load(data[: len(data) // 2] + tail)
    except plist.PlistError:
        pass
