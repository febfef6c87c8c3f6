"""DESIGN §2, row by row."""

import email.utils

import pytest

from agent.forward.classify import Action, classify, failure, parse_retry_after, tls_failure

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (200, Action.SUCCESS),
        (204, Action.SUCCESS),
        (429, Action.THROTTLE),
        (503, Action.THROTTLE),
        (408, Action.RETRY),
        (500, Action.RETRY),
        (502, Action.RETRY),
        (504, Action.RETRY),
        (507, Action.RETRY),
        (413, Action.SPLIT),
        (400, Action.BISECT),
        (422, Action.BISECT),
        (401, Action.CONFIG),
        (403, Action.CONFIG),
        (404, Action.CONFIG),
        (405, Action.CONFIG),
        (301, Action.CONFIG),
    ],
)
def test_outcome_table(status: int, action: Action) -> None:
    outcome = classify(status, {}, NOW, 300)
    assert outcome.action is action
    assert outcome.label == str(status)


def test_retry_after_seconds_and_cap() -> None:
    assert classify(429, {"Retry-After": "7"}, NOW, 300).retry_after == 7
    assert classify(503, {"Retry-After": "99999"}, NOW, 300).retry_after == 300
    assert classify(429, {}, NOW, 300).retry_after is None


def test_retry_after_http_date() -> None:
    date = email.utils.formatdate(NOW + 42, usegmt=True)
    assert parse_retry_after(date, NOW, 300) == pytest.approx(42)
    past = email.utils.formatdate(NOW - 42, usegmt=True)
    assert parse_retry_after(past, NOW, 300) == 0


@pytest.mark.parametrize("junk", ["", "soon", "nan", "-5"])
def test_retry_after_junk_is_safe(junk: str) -> None:
    value = parse_retry_after(junk, NOW, 300)
    assert value is None or 0 <= value <= 300


def test_no_answer_is_retried() -> None:
    assert failure("timeout", "x").action is Action.RETRY


def test_a_failed_tls_handshake_is_a_configuration_problem() -> None:
    outcome = tls_failure("TLS certificate of h:1 not trusted")
    assert (outcome.action, outcome.label, outcome.status) == (Action.CONFIG, "tls_error", None)
