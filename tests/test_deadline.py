"""A request's deadline: the client's own header, or a gateway's arrival stamp + the archive's client timeout."""

from __future__ import annotations

import pytest

from img2pose_serve.protocol.deadline import (
    DEADLINE_HEADER,
    REQUEST_START_HEADER,
    check_deadline,
    parse_request_start,
    request_deadline,
)
from img2pose_serve.protocol.errors import DeadlineExceeded, InvalidInput

NOW = 1_800_000_000.25


@pytest.mark.parametrize("stamp", ["t=1800000000.250", "1800000000.25", "t=1800000000250", "t=1800000000250000",
                                   b"t=1800000000.25", " t=1800000000.25 "])
def test_a_stamp_in_seconds_milliseconds_or_microseconds_is_unix_seconds(stamp):
    assert parse_request_start(stamp) == pytest.approx(NOW)


def test_no_stamp_is_no_deadline():
    assert parse_request_start(None) is None
    assert request_deadline(None, None, 30.0) == (None, DEADLINE_HEADER)


@pytest.mark.parametrize("stamp", ["soon", "t=", "t=-5", "t=0", "t=nan", "t=inf", "t=1e20", "1800000000.25s"])
def test_a_malformed_stamp_is_a_bad_request_that_names_the_gateway(stamp):
    with pytest.raises(InvalidInput, match=f"header {REQUEST_START_HEADER} must be t=<Unix time>.*gateway"):
        parse_request_start(stamp)


def test_the_earlier_deadline_wins_and_says_where_it_came_from():
    stamped = (NOW + 30, f"{REQUEST_START_HEADER} + clientTimeoutInMills 30 s")
    assert request_deadline(None, NOW, 30.0) == stamped
    assert request_deadline(NOW + 60, NOW, 30.0) == stamped
    assert request_deadline(NOW + 10, NOW, 30.0) == (NOW + 10, DEADLINE_HEADER)
    # no client timeout in the archive (0 or absent): the stamp sets no deadline
    assert request_deadline(NOW + 10, NOW, None) == (NOW + 10, DEADLINE_HEADER)
    assert request_deadline(None, NOW, 0.0) == (None, DEADLINE_HEADER)


def test_an_expired_stamp_is_answered_504_naming_its_source():
    deadline, source = request_deadline(None, NOW - 31, 30.0)
    with pytest.raises(DeadlineExceeded, match=r"\(X-Request-Start \+ clientTimeoutInMills 30 s\) passed 1.00 s "
                                               r"before it was parsed: not run"):
        check_deadline(deadline, "it was parsed", NOW, source=source)
