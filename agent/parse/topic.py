"""Topic templates: derive an MQTT filter and capture tags, measurement and field from topics."""

from __future__ import annotations

from dataclasses import dataclass

_RESERVED = ("measurement", "field")


@dataclass(frozen=True, slots=True)
class TopicMatch:
    """What a topic contributed: captured tags, and measurement/field when the template has them."""

    tags: dict[str, str]
    measurement: str | None
    field: str | None


def _placeholder(segment: str, template: str) -> str | None:
    """Return the name of a ``{name}`` segment, None for a literal; reject partial placeholders."""
    if "{" not in segment and "}" not in segment:
        return None
    name = segment[1:-1]
    if segment[0] != "{" or segment[-1] != "}" or "{" in name or "}" in name:
        raise ValueError(
            f"topic template {template!r}: segment {segment!r} must be a whole {{name}} "
            "placeholder or contain no braces"
        )
    if not name:
        raise ValueError(f"topic template {template!r}: empty placeholder name")
    return name


class TopicTemplate:
    """A parsed topic template; ``match`` splits once and compares by precomputed index."""

    __slots__ = (
        "_field_index",
        "_literals",
        "_measurement_index",
        "_multi",
        "_no_dollar",
        "_segments",
        "_tag_indexes",
        "filter",
        "has_field",
        "has_measurement",
        "template",
    )

    def __init__(self, template: str) -> None:
        if not template:
            raise ValueError("topic template is empty")
        segments = template.split("/")
        filter_parts: list[str] = []
        literals: list[tuple[int, str]] = []
        tags: list[tuple[int, str]] = []
        captured: dict[str, int] = {}
        for index, segment in enumerate(segments):
            if segment == "#":
                if index != len(segments) - 1:
                    raise ValueError(f"topic template {template!r}: '#' must be the last segment")
                filter_parts.append("#")
                continue
            if segment == "+":
                filter_parts.append("+")
                continue
            if "+" in segment or "#" in segment:
                raise ValueError(
                    f"topic template {template!r}: '+' and '#' must fill a whole segment"
                )
            name = _placeholder(segment, template)
            if name is None:
                filter_parts.append(segment)
                literals.append((index, segment))
                continue
            if name in captured:
                raise ValueError(f"topic template {template!r}: duplicate placeholder {{{name}}}")
            captured[name] = index
            filter_parts.append("+")
            if name not in _RESERVED:
                tags.append((index, name))
        self.template = template
        self.filter = "/".join(filter_parts)
        self.has_measurement = "measurement" in captured
        self.has_field = "field" in captured
        self._measurement_index = captured.get("measurement")
        self._field_index = captured.get("field")
        self._literals = tuple(literals)
        self._tag_indexes = tuple(tags)
        # With a trailing '#', a topic needs only the segments before it ("a/#" matches "a").
        self._multi = segments[-1] == "#"
        self._segments = len(segments) - 1 if self._multi else len(segments)
        # MQTT: a filter starting with a wildcard never matches a topic starting with '$'.
        self._no_dollar = filter_parts[0] in ("+", "#")

    def __repr__(self) -> str:
        return f"TopicTemplate({self.template!r})"

    @property
    def tag_names(self) -> tuple[str, ...]:
        return tuple(name for _, name in self._tag_indexes)

    def match(self, topic: str) -> TopicMatch | None:
        """Match a concrete topic; None when it does not fit the template."""
        if self._multi:
            parts = topic.split("/", self._segments)
            if len(parts) < self._segments:
                return None
        else:
            parts = topic.split("/")
            if len(parts) != self._segments:
                return None
        if self._no_dollar and topic.startswith("$"):
            return None
        for index, literal in self._literals:
            if parts[index] != literal:
                return None
        measurement = None
        if self._measurement_index is not None:
            measurement = parts[self._measurement_index]
            if not measurement:
                return None
        field = None
        if self._field_index is not None:
            field = parts[self._field_index]
            if not field:
                return None
        tags = {name: parts[index] for index, name in self._tag_indexes if parts[index]}
        return TopicMatch(tags, measurement, field)
