"""Mapping MQTT messages to line protocol for the value, influx and json formats."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.parse.clock import IngestClock
from agent.parse.lineprotocol import ParsedLine, parse_line, parse_lines
from agent.parse.payload import MappingRules, PayloadError, map_payload
from agent.parse.topic import TopicTemplate

TOPIC = "plant/l1/sensor/s1/temp"
NOW = 1_700_000_000_000_000_000


class FixedClock(IngestClock):
    """A clock whose first reading is NOW, so expected lines are exact."""

    def __init__(self) -> None:
        super().__init__(NOW - 1)


def rules(
    fmt: Any = "value", template: str = "plant/{line}/sensor/{sensor}/{measurement}", **kw: Any
) -> MappingRules:
    return MappingRules(TopicTemplate(template), fmt, **kw)


def lines(mapping: MappingRules, payload: bytes, topic: str = TOPIC) -> list[str]:
    return map_payload(mapping, topic, payload, FixedClock())


def points(mapping: MappingRules, payload: bytes, topic: str = TOPIC) -> list[ParsedLine]:
    return [parse_line(line) for line in lines(mapping, payload, topic)]


def reason(mapping: MappingRules, payload: bytes, topic: str = TOPIC) -> str:
    with pytest.raises(PayloadError) as caught:
        lines(mapping, payload, topic)
    return caught.value.reason


@pytest.fixture(autouse=True)
def _frozen_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.time_ns", lambda: NOW)  # a standing clock: FixedClock counts on


# --- rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"format": "csv"},
        {"precision": "m"},
        {"measurement": ""},
        {"measurement": "#m"},
        {"field": ""},
        {"field": "a\nb"},
        {"tags": {"": "x"}},
        {"tags": {"k": "a\nb"}},
    ],
)
def test_bad_rules(kw: dict[str, Any]) -> None:
    fmt = kw.pop("format", "value")
    with pytest.raises(ValueError):
        rules(fmt, **kw)


def test_payload_error_carries_reason() -> None:
    error = PayloadError("bad_json", "nope")
    assert (error.reason, str(error)) == ("bad_json", "nope")
    assert isinstance(error, ValueError)


# --- value ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"21.5", "value=21.5"),
        (b"21", "value=21.0"),
        (b" \t-3e2\r\n", "value=-300.0"),
        (b"+.5", "value=0.5"),
        (b"true", "value=true"),
        (b"FALSE", "value=false"),
        (b"True", "value=true"),
        (b"on", 'value="on"'),
        (b"nan", 'value="nan"'),
        (b"-Infinity", 'value="-Infinity"'),
        (b"1_000", 'value="1_000"'),
        ("\u0661\u0662".encode(), 'value="\u0661\u0662"'),  # non-ASCII digits stay text
        (b'say "hi" \\o/', 'value="say \\"hi\\" \\\\o/"'),
        ("gr\u00fc\u00df".encode(), 'value="gr\u00fc\u00df"'),
    ],
)
def test_value_format(payload: bytes, field: str) -> None:
    assert lines(rules(), payload) == [f"temp,line=l1,sensor=s1 {field} {NOW}"]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", "empty"),
        (b" \t\r\n", "empty"),
        (b"\xff\xfe", "not_utf8"),
        (b"1e999", "unrepresentable"),
        (b"line one\nline two", "unrepresentable"),
    ],
)
def test_value_format_errors(payload: bytes, expected: str) -> None:
    assert reason(rules(), payload) == expected


def test_value_defaults_without_captures() -> None:
    mapping = rules(template="plant/a/temp", tags={"plant": "p1"})
    assert lines(mapping, b"1", "plant/a/temp") == [f"mqtt,plant=p1 value=1.0 {NOW}"]
    mapping = rules(template="x", measurement="m 1", field="f=1")
    assert lines(mapping, b"1", "x") == [f"m\\ 1 f\\=1=1.0 {NOW}"]


def test_value_field_from_topic() -> None:
    mapping = rules(template="dev/{id}/{field}", measurement="readings")
    assert lines(mapping, b"7", "dev/9/temp c") == [f"readings,id=9 temp\\ c=7.0 {NOW}"]
    assert reason(mapping, b"7", "dev/9/a\nb") == "unrepresentable"


def test_value_gateway_tags_win_over_topic_captures() -> None:
    mapping = rules(tags={"plant": "p1", "line": "static"})
    assert lines(mapping, b"1") == [f"temp,line=static,plant=p1,sensor=s1 value=1.0 {NOW}"]


def test_value_topic_overrides_static_tags_only_when_allowed() -> None:
    mapping = rules(tags={"plant": "p1", "line": "static"}, override_tags=True)
    assert lines(mapping, b"1") == [f"temp,line=l1,plant=p1,sensor=s1 value=1.0 {NOW}"]
    # An empty capture is absent, so the static tag shows through.
    assert lines(mapping, b"1", "plant//sensor/s1/temp") == [
        f"temp,line=static,plant=p1,sensor=s1 value=1.0 {NOW}"
    ]


def test_value_topic_segments_are_escaped() -> None:
    assert lines(rules(), b"1", "plant/a b,c=d/sensor/x\\/m e") == [
        f"m\\ e,line=a\\ b\\,c\\=d,sensor=x\\\\ value=1.0 {NOW}"
    ]


def test_value_bad_topic() -> None:
    assert reason(rules(), b"1", "plant/l1/other/s1/temp") == "bad_topic"
    assert reason(rules(), b"1", "plant/l1/sensor/s1/") == "bad_topic"  # empty measurement
    assert reason(rules(), b"1", "plant/l1/sensor/s1/a\nb") == "unrepresentable"


def test_each_point_gets_its_own_receive_time() -> None:
    clock = IngestClock()
    first = map_payload(rules(), TOPIC, b"1", clock)
    second = map_payload(rules(), TOPIC, b"1", clock)
    assert parse_line(first[0]).ts_ns != parse_line(second[0]).ts_ns


# --- influx -----------------------------------------------------------------------------------


def test_influx_keeps_measurement_and_fields_and_merges_tags() -> None:
    mapping = rules("influx", "dev/{id}/{sensor}", tags={"plant": "p1"})
    payload = b'cpu,sensor=own,host=h u=1i,s="x" 1700000000\n# comment\n\nmem free=2,ok=t'
    assert lines(mapping, payload, "dev/7/s1") == [
        'cpu,host=h,id=7,plant=p1,sensor=own u=1i,s="x" 1700000000',
        f"mem,id=7,plant=p1,sensor=s1 free=2.0,ok=true {NOW}",
    ]


@pytest.mark.parametrize(("override", "plant"), [(False, "p1"), (True, "p2")])
def test_influx_payload_cannot_relabel_the_plant_unless_allowed(override: bool, plant: str) -> None:
    mapping = rules("influx", "dev/{id}", tags={"plant": "p1"}, override_tags=override)
    [point] = points(mapping, b"cpu,plant=p2 u=1i", "dev/7")
    assert point.tags == {"plant": plant, "id": "7"}


@pytest.mark.parametrize(
    ("precision", "ts"),
    [("s", 1_700_000_000 * 10**9), ("ms", 1_700_000_000 * 10**6), ("us", 1_700_000_000 * 10**3)],
)
def test_influx_precision_scales_timestamps(precision: str, ts: int) -> None:
    mapping = rules("influx", "t", precision=precision)
    assert lines(mapping, b"m f=1 1700000000", "t") == [f"m f=1.0 {ts}"]


def test_influx_reencoding_normalises_escapes() -> None:
    mapping = rules("influx", "t")
    assert lines(mapping, b"m,b=2,a=C:\\x f=1 5\r\n", "t") == ["m,a=C:\\x,b=2 f=1.0 5"]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", "empty"),
        (b"# only a comment\n\n", "empty"),
        (b"\xc3\x28", "not_utf8"),
        (b"m f=1\nm f=", "bad_line_protocol"),
        (b"m", "bad_line_protocol"),
        (b"m f=1 9223372036854775807", "bad_timestamp"),
        (b'm f="a\\\\"', None),
    ],
)
def test_influx_errors(payload: bytes, expected: str | None) -> None:
    mapping = rules("influx", "t", precision="s")
    if expected is None:
        assert lines(mapping, payload, "t") == [f'm f="a\\\\" {NOW}']
    else:
        assert reason(mapping, payload, "t") == expected


def test_influx_bad_topic() -> None:
    assert reason(rules("influx", "a/{x}"), b"m f=1", "b/1") == "bad_topic"


# --- json -------------------------------------------------------------------------------------


def jrules(**kw: Any) -> MappingRules:
    return rules("json", "dev/{id}", **kw)


def test_json_object() -> None:
    payload = json.dumps(
        {"temp": 21, "hum": 40.5, "ok": True, "state": "run", "n": None, "l": [1, 2]}
    ).encode()
    assert points(jrules(), payload, "dev/7") == [
        ParsedLine(
            "mqtt", {"id": "7"}, {"temp": 21.0, "hum": 40.5, "ok": True, "state": "run"}, NOW
        )
    ]


def test_json_ints_become_floats() -> None:
    [point] = points(jrules(), b'{"count": 3}', "dev/7")
    assert type(point.fields["count"]) is float


def test_json_nested_objects_are_flattened() -> None:
    payload = b'{"a": {"b": 1, "c": {"d": "x"}, "f": true}, "e": 2}'
    [point] = points(jrules(), payload, "dev/7")
    assert list(point.fields.items()) == [("a_b", 1.0), ("a_c_d", "x"), ("a_f", True), ("e", 2.0)]


def test_json_deep_but_valid_nesting_is_flattened() -> None:
    depth = 500
    payload = ('{"a":' * depth + "1" + "}" * depth).encode()
    [point] = points(jrules(), payload, "dev/7")
    assert point.fields == {"_".join(["a"] * depth): 1.0}


def test_json_list_of_objects_gets_distinct_times() -> None:
    got = points(jrules(), b'[{"v": 1}, {"v": 2}]', "dev/7")
    assert [(p.fields["v"], p.ts_ns) for p in got] == [(1.0, NOW), (2.0, NOW + 1)]


def test_json_tag_keys_and_precedence() -> None:
    mapping = jrules(
        tags={"site": "static", "plant": "p1"},
        json_tag_keys=frozenset({"site", "id", "unit", "meta_zone", "blank"}),
    )
    payload = b'{"site": "s9", "id": 42, "unit": "C", "meta": {"zone": "z"}, "blank": "", "v": 1}'
    [point] = points(mapping, payload, "dev/7")
    assert point.tags == {
        "site": "static",
        "id": "42",
        "unit": "C",
        "meta_zone": "z",
        "plant": "p1",
    }
    assert point.fields == {"v": 1.0}
    [point] = points(dataclasses.replace(mapping, override_tags=True), payload, "dev/7")
    assert point.tags["site"] == "s9"


def test_json_time_key() -> None:
    mapping = jrules(json_time_key="ts")
    payload = b'[{"ts": 1700000000, "v": 1}, {"ts": "1970-01-01T00:00:01Z", "v": 2}]'
    got = points(mapping, payload, "dev/7")
    assert [p.ts_ns for p in got] == [1_700_000_000 * 10**9, 10**9]
    assert all("ts" not in p.fields for p in got)


def test_json_time_key_only_at_top_level() -> None:
    [point] = points(jrules(), b'{"inner": {"time": 5}, "v": 1}', "dev/7")
    assert point.fields == {"inner_time": 5.0, "v": 1.0}
    assert point.ts_ns == NOW


def test_json_measurement_from_topic() -> None:
    mapping = rules("json", "dev/{id}/{measurement}")
    assert lines(mapping, b'{"v": 1}', "dev/7/power") == [f"power,id=7 v=1.0 {NOW}"]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", "empty"),
        (b"  ", "empty"),
        (b"\x80", "not_utf8"),
        (b"{", "bad_json"),
        (b"42", "bad_json"),
        (b'"text"', "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b'[{"v": 1}, 2]', "bad_json"),
        (b'{"v": NaN}', "bad_json"),
        (b'{"v": Infinity}', "bad_json"),
        (b"[" * 100_000 + b"]" * 100_000, "bad_json"),
        (b"1" * 5000, "bad_json"),
        (b"{}", "no_fields"),
        (b"[]", "no_fields"),
        (b'{"time": 5}', "no_fields"),
        (b'{"n": null, "l": [1], "o": {}}', "no_fields"),
        (b'{"v": 1, "time": "yesterday"}', "bad_timestamp"),
        (b'{"v": 1, "time": true}', "bad_timestamp"),
        (b'{"v": 1e400}', "unrepresentable"),
        (b'{"v": 1' + b"0" * 400 + b"}", "unrepresentable"),
        (b'{"": 1}', "unrepresentable"),
        (b'{"a\\nb": 1}', "unrepresentable"),
        (b'{"v": "a\\nb"}', "unrepresentable"),
    ],
)
def test_json_errors(payload: bytes, expected: str) -> None:
    assert reason(jrules(), payload, "dev/7") == expected


# --- properties -------------------------------------------------------------------------------

FORMAT_RULES = {
    "value": rules(),
    "influx": rules("influx", "plant/{line}/sensor/{sensor}/{measurement}", precision="ms"),
    "json": rules(
        "json", "plant/{line}/sensor/{sensor}/{measurement}", json_tag_keys=frozenset({"t"})
    ),
}
# Bytes drawn towards each format's syntax reach deeper code than uniform noise does.
syntax = st.sampled_from(
    [b"{", b"}", b"[", b"]", b'"', b":", b",", b" ", b"=", b"\\", b"\n", b"1", b"-", b"e", b".",
     b"t", b"i", b"u", b"#", b"a", b"null", b"true", b'"t"', b'"time"', b"\xff", b"\xc3\xa9"]
)  # fmt: skip
payloads = st.one_of(st.binary(max_size=64), st.lists(syntax, max_size=24).map(b"".join))


@settings(max_examples=300)
@given(fmt=st.sampled_from(sorted(FORMAT_RULES)), payload=payloads, topic=st.text(max_size=30))
def test_random_input_raises_only_payload_error(fmt: str, payload: bytes, topic: str) -> None:
    for subject in (topic, TOPIC):
        try:
            result = map_payload(FORMAT_RULES[fmt], subject, payload, IngestClock())
        except PayloadError as exc:
            assert exc.reason in {
                "empty",
                "not_utf8",
                "bad_json",
                "bad_line_protocol",
                "no_fields",
                "bad_timestamp",
                "bad_topic",
                "unrepresentable",
            }
        else:
            assert len(parse_lines("\n".join(result))) == len(result) > 0


@settings(max_examples=300)
@given(
    segment=st.text(
        st.characters(blacklist_categories=["Cc", "Cs"], blacklist_characters="/"),
        min_size=1,
        max_size=20,
    ),
    measurement=st.text(
        st.characters(blacklist_categories=["Cc", "Cs"], blacklist_characters="/#"),
        min_size=1,
        max_size=20,
    ),
)
def test_topic_segments_never_inject(segment: str, measurement: str) -> None:
    topic = f"plant/{segment}/sensor/{segment}/{measurement}"
    [point] = points(rules(tags={"plant": "p1"}), b"1", topic)
    assert point == ParsedLine(
        measurement, {"line": segment, "sensor": segment, "plant": "p1"}, {"value": 1.0}, NOW
    )
