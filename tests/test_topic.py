"""Topic templates: filter derivation, matching rules and template validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.parse.topic import TopicMatch, TopicTemplate


@pytest.mark.parametrize(
    ("template", "mqtt_filter", "has_measurement", "has_field"),
    [
        ("plant/{line}/sensor/{sensor}/{measurement}", "plant/+/sensor/+/+", True, False),
        ("dev/{id}/{field}", "dev/+/+", False, True),
        ("a/+/b/#", "a/+/b/#", False, False),
        ("#", "#", False, False),
        ("a//b", "a//b", False, False),
        ("{measurement}/{field}/#", "+/+/#", True, True),
    ],
)
def test_filter_and_flags(
    template: str, mqtt_filter: str, has_measurement: bool, has_field: bool
) -> None:
    parsed = TopicTemplate(template)
    assert parsed.template == template
    assert parsed.filter == mqtt_filter
    assert parsed.has_measurement is has_measurement
    assert parsed.has_field is has_field


def test_captures_tags_measurement_and_field() -> None:
    template = TopicTemplate("plant/{line}/{sensor}/{measurement}/{field}")
    assert template.match("plant/l1/s 1/temp/max") == TopicMatch(
        {"line": "l1", "sensor": "s 1"}, "temp", "max"
    )


def test_literals_must_match_exactly() -> None:
    template = TopicTemplate("plant/{line}/sensor")
    assert template.match("plant/l1/sensor") is not None
    assert template.match("Plant/l1/sensor") is None
    assert template.match("plant/l1/sensors") is None


def test_segment_count_must_match_without_hash() -> None:
    template = TopicTemplate("a/{x}")
    assert template.match("a") is None
    assert template.match("a/1/2") is None
    assert template.match("a/1") == TopicMatch({"x": "1"}, None, None)


def test_plus_matches_one_segment_without_capture() -> None:
    template = TopicTemplate("a/+/{x}")
    assert template.match("a/anything/v") == TopicMatch({"x": "v"}, None, None)
    assert template.match("a/v") is None


@pytest.mark.parametrize(
    ("topic", "matches"),
    [("a", True), ("a/", True), ("a/b", True), ("a/b/c/d", True), ("b", False), ("ab", False)],
)
def test_hash_matches_zero_or_more_segments(topic: str, matches: bool) -> None:
    assert (TopicTemplate("a/#").match(topic) is not None) is matches


def test_hash_alone_matches_everything_but_dollar_topics() -> None:
    template = TopicTemplate("#")
    assert template.match("x/y/z") == TopicMatch({}, None, None)
    assert template.match("$SYS/broker/uptime") is None


def test_dollar_topics_need_a_literal_first_segment() -> None:
    assert TopicTemplate("{a}/b").match("$SYS/b") is None
    assert TopicTemplate("+/b").match("$SYS/b") is None
    assert TopicTemplate("$SYS/{x}").match("$SYS/uptime") == TopicMatch({"x": "uptime"}, None, None)


def test_captures_before_a_hash() -> None:
    template = TopicTemplate("dev/{id}/{measurement}/#")
    assert template.match("dev/7/temp") == TopicMatch({"id": "7"}, "temp", None)
    assert template.match("dev/7/temp/x/y") == TopicMatch({"id": "7"}, "temp", None)
    assert template.match("dev/7") is None


def test_empty_tag_segment_omits_the_tag() -> None:
    assert TopicTemplate("a/{x}/{y}").match("a//2") == TopicMatch({"y": "2"}, None, None)


@pytest.mark.parametrize("topic", ["a//f", "a/m/"])
def test_empty_measurement_or_field_does_not_match(topic: str) -> None:
    assert TopicTemplate("a/{measurement}/{field}").match(topic) is None


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("", "empty"),
        ("a/#/b", "last segment"),
        ("x{a}", "whole"),
        ("{a}x", "whole"),
        ("a/{a}b/c", "whole"),
        ("{a{b}}", "whole"),
        ("a/}", "whole"),
        ("a/{", "whole"),
        ("{}", "empty placeholder name"),
        ("{a}/{a}", "duplicate placeholder {a}"),
        ("{measurement}/{measurement}", "duplicate"),
        ("{field}/x/{field}", "duplicate"),
        ("a+b", "whole segment"),
        ("a/b#", "whole segment"),
        ("{a+}", "whole segment"),
    ],
)
def test_bad_templates(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TopicTemplate(template)


# --- properties -------------------------------------------------------------------------------

segments = st.text(st.characters(exclude_characters="/\x00"), min_size=1, max_size=12)


@settings(max_examples=300)
@given(
    values=st.lists(segments, min_size=1, max_size=8),
    literal_at=st.integers(min_value=0, max_value=8),
    trailing=st.one_of(st.none(), st.lists(segments, max_size=3)),
)
def test_random_segments_are_captured_exactly(
    values: list[str], literal_at: int, trailing: list[str] | None
) -> None:
    parts = [f"{{t{i}}}" for i in range(len(values))]
    topic_parts = list(values)
    if literal_at < len(parts):  # swap one capture for a literal that must match as-is
        parts[literal_at] = topic_parts[literal_at] = "lit"
    expected = {f"t{i}": v for i, v in enumerate(values) if i != literal_at}
    if trailing is not None:
        parts.append("#")
        topic_parts.extend(trailing)
    template = TopicTemplate("/".join(parts))
    topic = "/".join(topic_parts)
    if topic.startswith("$") and template.filter.startswith(("+", "#")):
        assert template.match(topic) is None
    else:
        assert template.match(topic) == TopicMatch(expected, None, None)
