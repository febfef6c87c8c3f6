"""Line protocol escaping, encoding and parsing, including round-trip properties."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.parse.lineprotocol import (
    FieldValue,
    LineProtocolError,
    ParsedLine,
    encode_line,
    escape_key,
    escape_measurement,
    format_field,
    parse_line,
    parse_lines,
)

# --- escaping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("cpu", "cpu"),
        ("my cpu", "my\\ cpu"),
        ("a,b", "a\\,b"),
        ("a=b", "a=b"),  # '=' needs no escape in a measurement
        ("C:\\temp", "C:\\temp"),  # a backslash before an ordinary character stays single
        ("a\\", "a\\\\"),  # a trailing backslash would escape the separator
        ("a\\ b", "a\\\\\\ b"),
        ("a\\\\b", "a\\\\\\b"),
        ('say "hi"', 'say\\ "hi"'),
    ],
)
def test_escape_measurement(raw: str, escaped: str) -> None:
    assert escape_measurement(raw) == escaped


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("host", "host"),
        ("a b", "a\\ b"),
        ("a,b", "a\\,b"),
        ("a=b", "a\\=b"),
        ("C:\\temp", "C:\\temp"),
        ("x\\", "x\\\\"),
        ("x\\=", "x\\\\\\="),
        ("\\\\", "\\\\\\\\"),
        ('q"uote', 'q"uote'),
        ("", ""),
    ],
)
def test_escape_key(raw: str, escaped: str) -> None:
    assert escape_key(raw) == escaped


# --- field formatting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (21.0, "21.0"),
        (-0.5, "-0.5"),
        (1e20, "1e+20"),
        (5, "5i"),
        (-(2**63), "-9223372036854775808i"),
        (True, "true"),
        (False, "false"),
        ("plain", '"plain"'),
        ('a"b\\c', '"a\\"b\\\\c"'),
        ("", '""'),
    ],
)
def test_format_field(value: FieldValue, text: str) -> None:
    assert format_field(value) == text


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 2**63, "a\nb", "a\rb"])
def test_format_field_rejects(value: FieldValue) -> None:
    with pytest.raises(LineProtocolError):
        format_field(value)


# --- encoding ---------------------------------------------------------------------------------


def test_encode_line_sorts_tags_and_skips_empty_values() -> None:
    line = encode_line("cpu", {"z": "1", "a": "2", "m": ""}, {"value": 0.5, "n": 3}, 10)
    assert line == "cpu,a=2,z=1 value=0.5,n=3i 10"


def test_encode_line_without_tags() -> None:
    assert encode_line("m", {}, {"on": True}, -5) == "m on=true -5"


def test_encode_line_escapes_everything() -> None:
    line = encode_line("a b,c", {"k=1": "v 1,2"}, {"f,x": 'say "hi"'}, 0)
    assert line == 'a\\ b\\,c,k\\=1=v\\ 1\\,2 f\\,x="say \\"hi\\"" 0'


@pytest.mark.parametrize(
    ("measurement", "tags", "fields", "ts", "message"),
    [
        ("", {}, {"f": 1.0}, 0, "empty measurement"),
        ("#m", {}, {"f": 1.0}, 0, "comment"),
        ("m", {}, {}, 0, "no fields"),
        ("m", {"": "v"}, {"f": 1.0}, 0, "empty tag key"),
        ("m", {}, {"": 1.0}, 0, "empty field key"),
        ("m\n", {}, {"f": 1.0}, 0, "control character"),
        ("m", {"k\r": "v"}, {"f": 1.0}, 0, "control character"),
        ("m", {"k": "v\n"}, {"f": 1.0}, 0, "control character"),
        ("m", {}, {"f\n": 1.0}, 0, "control character"),
        ("m\x00", {}, {"f": 1.0}, 0, "control character"),
        ("m", {"k": "a\tb"}, {"f": 1.0}, 0, "control character"),
        ("m", {}, {"f\x7f": 1.0}, 0, "control character"),
        ("m", {}, {"f": "a\nb"}, 0, "line break"),
        ("m", {}, {"f": math.nan}, 0, "not finite"),
        ("m", {}, {"f": 1.0}, 2**63, "int64"),
    ],
)
def test_encode_line_rejects(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], ts: int, message: str
) -> None:
    with pytest.raises(LineProtocolError, match=message):
        encode_line(measurement, tags, fields, ts)


# --- parsing ----------------------------------------------------------------------------------


def test_parse_line_types() -> None:
    line = (
        'm,host=a f1=1.5,f2=-3i,f3=7u,f4=t,f5=FALSE,f6="x \\"y\\" \\\\ z",f7=1e3,f8=-.5E-2,f9=2 '
        "1465839830100400200"
    )
    assert parse_line(line) == ParsedLine(
        "m",
        {"host": "a"},
        {
            "f1": 1.5,
            "f2": -3,
            "f3": 7,
            "f4": True,
            "f5": False,
            "f6": 'x "y" \\ z',
            "f7": 1000.0,
            "f8": -0.005,
            "f9": 2.0,
        },
        1465839830100400200,
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *((b, True) for b in ("t", "T", "true", "True", "TRUE")),
        *((b, False) for b in ("f", "F", "false", "False", "FALSE")),
        ("1.", 1.0),
        (".5", 0.5),
        ("1E+2", 100.0),
        ("9223372036854775807i", 2**63 - 1),
        ("18446744073709551615u", 2**64 - 1),
        ('"a\\b"', "a\\b"),  # a backslash before an ordinary character stays
        ('"a\\\\"', "a\\"),
        ('""', ""),
        ('"x=1,y 2"', "x=1,y 2"),
    ],
)
def test_parse_field_values(text: str, value: FieldValue) -> None:
    parsed = parse_line(f"m f={text}")
    assert parsed.fields == {"f": value}
    assert type(parsed.fields["f"]) is type(value)


def test_parse_line_influxdb_doc_examples() -> None:
    assert parse_line("weather,location=us\\,midwest temperature=82 1465839830100400200") == (
        ParsedLine(
            "weather", {"location": "us,midwest"}, {"temperature": 82.0}, 1465839830100400200
        )
    )
    assert parse_line('wea\\ ther,loc\\ ation=us temp\\=rature="too\\"hot\\""').fields == {
        "temp=rature": 'too"hot"'
    }
    assert parse_line("m\\=x,t=a\\=b f=1").measurement == "m\\=x"  # '=' is not escaped here
    assert parse_line("m,t=C:\\temp f=1").tags == {"t": "C:\\temp"}
    assert parse_line("m,t=a\\\\ f=1").tags == {"t": "a\\"}


def test_parse_line_spacing_and_optional_timestamp() -> None:
    assert parse_line("m  f=1   ").ts_ns is None
    assert parse_line("m,t=1   f=1  -12  ") == ParsedLine("m", {"t": "1"}, {"f": 1.0}, -12)
    assert parse_line("\tm f=1").measurement == "\tm"


def test_parse_line_duplicate_fields_keep_the_last() -> None:
    assert parse_line("m f=1,f=2").fields == {"f": 2.0}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "missing measurement at column 1"),
        (" m f=1", "missing measurement at column 1"),
        (",t=1 f=1", "missing measurement"),
        ("m", "missing fields at column 2"),
        ("m,t=1", "missing fields at column 6"),
        ("m,t f=1", "tag key without '='"),
        ("m,=1 f=1", "missing tag key at column 3"),
        ("m,t= f=1", "missing value for tag 't' at column 5"),
        ("m,t=1,t=2 f=1", "duplicate tag key 't'"),
        ("m,t=a=b f=1", "unescaped '=' in tag value at column 6"),
        ("m,t=1, f=1", "missing tag key"),
        ("m f", "field key without '='"),
        ("m =1", "missing field key at column 3"),
        ("m f=", "missing field value at column 5"),
        ("m f=1,", "missing field key at column 7"),
        ("m f=,g=1", "missing field value"),
        ("m f=yes", "invalid field value 'yes' at column 5"),
        ("m f=1.5i", "invalid field value"),
        ("m f=-1u", "invalid field value"),
        ("m f=1..2", "invalid field value"),
        ("m f=+1", "invalid field value"),
        ("m f=NaN", "invalid field value"),
        ("m f=inf", "invalid field value"),
        ("m f=1e400", "out of range"),
        ("m f=9223372036854775808i", "int64"),
        ("m f=18446744073709551616u", "uint64"),
        ('m f="abc', "unterminated string field value at column 5"),
        ('m f="abc\\"', "unterminated string"),
        ('m f="a"b', "unexpected character after string field value at column 8"),
        ("m f=1 12a", "invalid timestamp at column 7"),
        ("m f=1 1 2", "invalid timestamp"),
        ("m f=1 9223372036854775808", "int64"),
        ("m f=1\n", "line break at column 6"),
        ("m f=1\r", "line break"),
    ],
)
def test_parse_line_errors(line: str, message: str) -> None:
    with pytest.raises(LineProtocolError, match=message):
        parse_line(line)


def test_parse_lines_skips_blanks_and_comments_and_accepts_crlf() -> None:
    text = "# header\r\n\r\nm f=1 1\r\n   \n\tm2 f=2\n#m f=3\nm3 f=3 3"
    assert [p.measurement for p in parse_lines(text)] == ["m", "\tm2", "m3"]
    assert parse_lines("") == []


def test_parse_lines_reports_the_line_number() -> None:
    with pytest.raises(LineProtocolError, match="line 3: invalid field value"):
        parse_lines("m f=1\n\nm f=x")


# --- properties -------------------------------------------------------------------------------

# Text that stresses escaping: plenty of separators, backslashes and quotes, plus any character
# except the control characters that names may not hold (check_name).
_tricky = st.text(st.sampled_from(list('ab\\ ,="#')), min_size=1, max_size=12)
_anything = st.text(st.characters(blacklist_categories=["Cc", "Cs"]), min_size=1, max_size=20)
names = st.one_of(_tricky, _anything)
measurements = names.filter(lambda name: not name.startswith("#"))
field_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(st.characters(exclude_characters="\n\r"), max_size=20),
    st.text(st.sampled_from(list('a\\"')), max_size=8),
)
timestamps = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=300)
@given(
    measurement=measurements,
    tags=st.dictionaries(names, st.one_of(names, st.just("")), max_size=4),
    fields=st.dictionaries(names, field_values, min_size=1, max_size=4),
    ts=timestamps,
)
def test_encode_parse_round_trip(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], ts: int
) -> None:
    line = encode_line(measurement, tags, fields, ts)
    assert "\n" not in line and "\r" not in line
    expected = ParsedLine(measurement, {k: v for k, v in tags.items() if v}, fields, ts)
    assert parse_line(line) == expected
    assert parse_lines(line) == [expected]
    for key, value in fields.items():
        assert type(parse_line(line).fields[key]) is type(value)


@settings(max_examples=300)
@given(segment=names)
def test_untrusted_text_never_injects(segment: str) -> None:
    line = encode_line(
        segment if not segment.startswith("#") else "m" + segment,
        {"site": "a", "sensor": segment, "zone": "z"},
        {"value": 1.0, segment: segment},
        1,
    )
    [parsed] = parse_lines(line)
    assert parsed.tags == {"site": "a", "sensor": segment, "zone": "z"}
    assert set(parsed.fields) == {"value", segment}
    assert parsed.fields[segment] == segment


@settings(max_examples=200)
@given(
    name=st.text(min_size=1, max_size=10),
    control=st.characters(min_codepoint=0, max_codepoint=0x1F) | st.just("\x7f"),
    where=st.sampled_from(["measurement", "tag key", "tag value", "field key"]),
)
def test_a_control_character_in_any_name_is_refused(name: str, control: str, where: str) -> None:
    bad = name[:3] + control + name[3:]
    parts: dict[str, Any] = {
        "measurement": ("m" + bad, {}, {"f": 1.0}),
        "tag key": ("m", {bad: "v"}, {"f": 1.0}),
        "tag value": ("m", {"k": bad}, {"f": 1.0}),
        "field key": ("m", {}, {bad: 1.0}),
    }
    measurement, tags, fields = parts[where]
    with pytest.raises(LineProtocolError, match="control character"):
        encode_line(measurement, tags, fields, 0)
