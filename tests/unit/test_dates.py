"""Intacct's date text read without strptime, and protobuf timestamps built directly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from arbridge_runtime.dates import now_timestamp, timestamp, us_datetime


@pytest.mark.parametrize(
    "text",
    ["11/26/2026", "11/26/2026 10:03:04", "12/31/1999 23:59:59", "02/29/2028", "01/01/0001"],
)
def test_padded_forms_read_as_strptime_reads_them(text: str) -> None:
    fmt = "%m/%d/%Y %H:%M:%S" if len(text) > 10 else "%m/%d/%Y"
    assert us_datetime(text) == datetime.strptime(text, fmt)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1/2/2026",  # unpadded: left to strptime's lenient forms
        "02/30/2026",
        "13/01/2026",
        "11/26/2026 25:00:00",
        "11-26-2026",
        "ab/cd/efgh",
        "\uff111/26/2026",  # a full-width digit
        "11/26/2026T10:03:04",
        "11/26/2026 10:03",
        "11/26/+026",  # what fromisoformat would take as a sign
        "-1/26/2026",
        "11/26/2026 10: 3:04",
        "11/26/2026 10:03:0Z",
        "11/26/2026 10:03:04.5",
    ],
)
def test_anything_else_is_none(text: str) -> None:
    assert us_datetime(text) is None


def test_timestamps_match_protobufs_own_conversion() -> None:
    for moment in (
        datetime(2026, 11, 26, 10, 3, 4, 123456, tzinfo=UTC),
        datetime(1969, 7, 20, 20, 17, 40, tzinfo=UTC),
        datetime(2026, 3, 8, 2, 30, tzinfo=timezone(timedelta(hours=-8))),
    ):
        expected = Timestamp()
        expected.FromDatetime(moment)
        assert timestamp(moment) == expected
    now = now_timestamp().ToDatetime(tzinfo=UTC)
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)
