"""The steady-state bench pairs PUBLISH and PUBACK packets from a capture (bench/puback.py) and
regenerates the paced stream to count line bytes (bench/pace.py); both must be exact, or its
latency and disk figures are wrong without anyone noticing."""

from __future__ import annotations

import itertools
import math

import pytest

from bench.pace import readings
from bench.puback import PUBACK, PUBLISH, Packet, puback_latency


def test_each_publish_meets_the_next_puback_of_its_id_also_when_ids_are_reused() -> None:
    packets: list[Packet] = [
        (10.000, True, PUBLISH, 1),
        (10.000, True, PUBLISH, 2),  # two PDUs of one segment share its time
        (10.010, False, PUBACK, 1),
        (10.010, False, PUBACK, 2),
        (10.020, True, PUBLISH, 1),  # id 1 again, once acknowledged
        (10.050, False, PUBACK, 1),
    ]
    got = puback_latency(iter(packets), 9.0, 11.0, dropped=0)
    assert got.publishes == 3
    assert got.matched == 3
    assert got.unanswered == 0
    assert got.max_in_flight == 2
    assert got.p50_ms == pytest.approx(10.0)
    assert got.p99_ms == pytest.approx(29.6)


def test_only_publishes_inside_the_window_count_and_unanswered_ones_are_reported() -> None:
    packets: list[Packet] = [
        (1.0, True, PUBLISH, 1),  # before the window: its PUBACK is not a sample
        (2.0, True, PUBLISH, 2),
        (2.1, False, PUBACK, 1),
        (2.2, False, PUBACK, 2),
        (2.5, True, PUBLISH, 3),
        (2.6, True, PUBLISH, 4),
        (2.7, False, PUBACK, 3),
        (4.0, True, PUBLISH, 5),  # after the window
    ]
    got = puback_latency(iter(packets), 1.5, 3.0, dropped=None)
    assert got.publishes == 3  # ids 2, 3 and 4
    assert got.matched == 2
    assert got.unanswered == 1  # id 4
    assert got.max_in_flight == 2
    assert got.p50_ms == pytest.approx(200.0)


def test_a_puback_from_the_broker_or_for_an_unknown_id_is_ignored() -> None:
    packets: list[Packet] = [
        (1.0, True, PUBLISH, 7),
        (1.1, True, PUBACK, 7),  # the broker acknowledging something else
        (1.2, False, PUBACK, 8),  # never published to this consumer
        (1.3, False, PUBACK, 7),
        (1.4, True, PUBLISH, 9),
        (1.5, False, PUBACK, 9),
    ]
    got = puback_latency(iter(packets), 0.0, 2.0, dropped=0)
    assert got.matched == 2
    assert got.p50_ms == pytest.approx(200.0)


def test_the_paced_stream_is_the_same_every_time_with_one_sensor_per_reading_per_second() -> None:
    first = list(itertools.islice(readings("p", 1000), 2500))
    again = list(itertools.islice(readings("p", 1000), 2500))
    assert first == again
    assert len({topic for topic, _ in first[:1000]}) == 1000
    assert [topic for topic, _ in first[:1000]] == [topic for topic, _ in first[1000:2000]]
    assert all(math.isfinite(float(payload)) for _, payload in first)
