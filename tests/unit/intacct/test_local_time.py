"""The client's company-local WHENMODIFIED text to an instant: the connector's fast form
(whole seconds, for every streamed record) must agree with the exact one everywhere,
across daylight-saving changes and in zones whose offsets are not whole hours."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arbridge_intacct.client import Credentials, IntacctClient

ZONES = (
    "",  # none configured and no session yet: UTC
    "UTC",
    "America/Los_Angeles",
    "America/St_Johns",  # -03:30 / -02:30
    "Asia/Kolkata",  # +05:30, no DST
    "Australia/Lord_Howe",  # a DST change of half an hour
    "Europe/London",
)


def _client(time_zone: str) -> IntacctClient:
    return IntacctClient(
        http=None,  # type: ignore[arg-type]  # no call is made
        credentials=Credentials("co", "user", "pw", "sender", "spw"),
        time_zone=time_zone,
    )


def _exact(client: IntacctClient, text: str) -> int | None:
    moment = client.from_local(text)
    return None if moment is None else int(moment.timestamp())


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    moment=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31)),
    date_only=st.booleans(),
)
def test_the_fast_instant_is_the_exact_one(zone: str, moment: datetime, date_only: bool) -> None:
    client = _client(zone)
    text = moment.strftime("%m/%d/%Y" if date_only else "%m/%d/%Y %H:%M:%S")
    assert client.epoch_from_local(text) == _exact(client, text)


@pytest.mark.parametrize(
    ("zone", "text"),
    [
        ("America/Los_Angeles", "03/08/2026 02:30:00"),  # in the spring gap
        ("America/Los_Angeles", "11/01/2026 01:30:00"),  # the hour that happens twice
        ("America/Los_Angeles", "11/01/2026 02:00:00"),
        ("Australia/Lord_Howe", "04/05/2026 01:45:00"),  # its half-hour fall back
        ("Europe/London", "03/29/2026 01:00:00"),
        ("America/Los_Angeles", "1/5/2026"),  # unpadded: strptime's form
        ("America/Los_Angeles", "1/5/2026 7:08:09"),
        ("America/Los_Angeles", ""),
        ("America/Los_Angeles", "not a time"),
    ],
)
def test_edges_and_other_forms(zone: str, text: str) -> None:
    client = _client(zone)
    assert client.epoch_from_local(text) == _exact(client, text)


def test_a_known_instant() -> None:
    # 10:11:12 in Los Angeles on 1 October 2026 (daylight time, UTC-7).
    assert _client("America/Los_Angeles").epoch_from_local("10/01/2026 10:11:12") == 1790874672
