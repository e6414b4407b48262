"""Intacct's date and time text (``MM/DD/YYYY`` and ``MM/DD/YYYY HH:MM:SS``), read fast.

Every record of a sync carries several such values, and ``strptime`` costs a few
microseconds each; slicing the fixed positions costs a fraction of that. Text
in any other shape gets None here, so a caller can still try ``strptime``'s
more lenient forms (single-digit months and days) before refusing it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def us_datetime(text: str) -> datetime | None:
    """``MM/DD/YYYY`` (at midnight) or ``MM/DD/YYYY HH:MM:SS``, zero-padded; else None."""
    size = len(text)
    if size < 10 or text[2] != "/" or text[5] != "/":
        return None
    if size == 10:
        iso = f"{text[6:10]}-{text[0:2]}-{text[3:5]}"
    elif size == 19 and text[10] == " " and text[13] == ":" and text[16] == ":":
        iso = f"{text[6:10]}-{text[0:2]}-{text[3:5]}T{text[11:19]}"
    else:
        return None
    if not iso.isascii():
        return None
    try:
        return datetime.fromisoformat(iso)  # in C: checks every digit and the calendar
    except ValueError:  # 02/30, 25:00:00, a letter where a digit goes
        return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(moment: datetime) -> Timestamp:
    """An aware datetime as a protobuf Timestamp, exactly, at a fifth of the cost of
    ``Timestamp.FromDatetime`` (a sync stamps every record and every event)."""
    since = moment - _EPOCH
    return Timestamp(seconds=since.days * 86400 + since.seconds, nanos=since.microseconds * 1000)


def now_timestamp() -> Timestamp:
    """The current time as a protobuf Timestamp."""
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return Timestamp(seconds=seconds, nanos=nanos)
