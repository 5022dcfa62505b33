"""Config types are strict: a value of the wrong TOML type is an error at its key path, never coerced.

The wrong values are generated from the model itself: for every key of every section, each TOML type
the key does not take (booleans, integers, floats, strings, arrays, tables, datetimes) is tried, all
keys of one round in one file, so each round also proves that every mistake is reported at once.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from appliance.config import Bytes, Config, ConfigError, Seconds, load_config, parse_config

# One value of each TOML type, as tomllib hands it over.
PROBES = {
    "boolean": True,
    "integer": 7,
    "float": 7.5,
    "string": "7",
    "array": ["7"],
    "table": {"x": 1},
    "datetime": dt.datetime(1979, 5, 27, 7, 32, tzinfo=dt.UTC),
}


def sections() -> dict[str, type[BaseModel]]:
    return {name: field.annotation for name, field in Config.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}


def _unwrap(annotation, metadata: list) -> tuple[object, list]:
    """The type under Optional[...] and Annotated[...], with the validators attached on the way."""
    metadata = list(metadata)
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *extra = typing.get_args(annotation)
            metadata.extend(extra)
        elif origin in (typing.Union, types.UnionType):
            annotation, = [a for a in typing.get_args(annotation) if a is not type(None)]
        else:
            return annotation, metadata


def _has(metadata: list, alias) -> bool:
    return any(m in metadata for m in typing.get_args(alias)[1:])


def toml_types(annotation, metadata: list = ()) -> set[str]:
    """The TOML types a key of this annotation takes (durations and sizes also as strings)."""
    annotation, metadata = _unwrap(annotation, metadata)
    if annotation is bool:
        return {"boolean"}
    if annotation is int:
        return {"integer", "string"} if _has(metadata, Bytes) else {"integer"}
    if annotation is float:
        return {"integer", "float", "string"} if _has(metadata, Seconds) else {"integer", "float"}
    if annotation in (str, Path) or typing.get_origin(annotation) is typing.Literal:
        return {"string"}
    if typing.get_origin(annotation) is list:
        return {"array"}
    if annotation is dict or typing.get_origin(annotation) is dict or (
            isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return {"table"}
    raise AssertionError(f"a config type this test does not know yet: {annotation!r}")


def item_types(annotation) -> set[str] | None:
    """For an array key: the TOML types its items take."""
    annotation, _ = _unwrap(annotation, [])
    if typing.get_origin(annotation) is list:
        return toml_types(typing.get_args(annotation)[0])
    return None


def every_key():
    for section, model in sections().items():
        for key, field in model.model_fields.items():
            yield section, key, field


def problems(data: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base_dir=Path("/nonexistent"))
    found = {}
    for problem in caught.value.problems:
        key, _, message = problem.partition(": ")
        found[key] = message
    return found


def test_the_generator_knows_every_key():
    keys = list(every_key())
    assert len(keys) > 40  # a model change that hides keys from this test would show here
    for _, _, field in keys:
        assert toml_types(field.annotation, field.metadata)


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_a_value_of_the_wrong_toml_type_is_refused_at_every_key(probe):
    value = PROBES[probe]
    data: dict[str, dict] = {name: {} for name in sections()}
    expected = set()
    for section, key, field in every_key():
        if probe not in toml_types(field.annotation, field.metadata):
            data[section][key] = value
            expected.add(f"{section}.{key}")
    assert expected
    found = problems(data)
    if found.get("server.public_url") == "required key is missing":  # the probe is a string
        del found["server.public_url"]
    assert set(found) == expected
    for key in expected:
        assert found[key].startswith("expected "), (key, found[key])


@pytest.mark.parametrize("probe", sorted(set(PROBES) - {"string"}))  # arrays hold strings or tables
def test_an_array_item_of_the_wrong_toml_type_is_refused(probe):
    data: dict[str, dict] = {"server": {"public_url": "https://mdm.example.org"}}
    expected = set()
    for section, key, field in every_key():
        items = item_types(field.annotation)
        if items is not None and probe not in items:
            data.setdefault(section, {})[key] = [PROBES[probe]]
            expected.add(f"{section}.{key}.0")
    assert expected
    assert set(problems(data)) == expected


@pytest.mark.parametrize("probe", ["boolean", "integer", "string", "array"])
def test_a_section_that_is_not_a_table_is_refused(probe):
    data = {name: PROBES[probe] for name in sections() if name != "server"}
    data["server"] = {"public_url": "https://mdm.example.org"}
    found = problems(data)
    assert set(found) == set(sections()) - {"server"}
    assert all(message.startswith("expected a table") for message in found.values())


def test_the_four_coercions_found_in_review_are_errors(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_text(
        '[server]\npublic_url = "https://mdm.example.org"\nmax_body_size = true\n'
        '[apns]\nrepush_interval = true\n'
        '[enrollment]\none_time_challenge = "yes"\ncertificate_validity_days = "365"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = caught.value.problems
    assert len(found) == 4, found
    assert found[0].startswith("server.max_body_size: expected a size") and found[0].endswith("(got true)")
    assert found[1].startswith("apns.repush_interval: expected a duration") and found[1].endswith("(got true)")
    assert found[2] == 'enrollment.one_time_challenge: expected true or false (got "yes")'
    assert found[3] == 'enrollment.certificate_validity_days: expected a whole number (got "365")'


def test_documented_forms_still_parse():
    config = parse_config({
        "server": {"public_url": "https://mdm.example.org", "max_body_size": "10MiB", "shutdown_grace": 5},
        "apns": {"repush_interval": "24h", "timeout": 2.5, "expiration": 259200, "max_streams": 50},
        "enrollment": {"one_time_challenge": True, "certificate_validity_days": 1, "challenge_ttl": "15m"},
    })
    assert config.server.max_body_size == 10 * 1024 * 1024 and config.server.shutdown_grace == 5.0
    assert config.apns.repush_interval == 86400 and config.apns.timeout == 2.5
    assert config.apns.expiration == 259200 and config.apns.max_streams == 50
    assert config.enrollment.one_time_challenge is True
    assert config.enrollment.certificate_validity_days == 1  # short validity stays allowed (renewal tests)


def test_a_wrong_secret_is_named_but_never_echoed():
    found = problems({"server": {"public_url": "https://mdm.example.org"},
                      "api": {"key": "short-secret"}, "enrollment": {"secret": 123456789}})
    assert "short-secret" not in found["api.key"] and "123456789" not in found["enrollment.secret"]
    assert found["enrollment.secret"].startswith("expected a string")


def test_a_ca_bundle_that_holds_no_certificate_is_refused(tmp_path):
    (tmp_path / "not-a-ca.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError) as caught:
        parse_config({"server": {"public_url": "https://mdm.example.org"},
                      "apns": {"ca_file": "not-a-ca.pem"}, "webhook": {"ca_file": "not-a-ca.pem"}},
                     base_dir=tmp_path)
    found = caught.value.problems
    assert [p.split(":")[0] for p in found] == ["apns.ca_file", "webhook.ca_file"]
    assert all(str(tmp_path / "not-a-ca.pem") in p and "no usable PEM certificate" in p for p in found)
