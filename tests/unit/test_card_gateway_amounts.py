"""The card gateway's answers carry amounts as JSON numbers: read as decimals, exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arbridge_payments.gateway import _transaction, read_json
from arbridge_runtime.money import from_minor


def test_an_amount_a_float_cannot_hold_is_read_exactly() -> None:
    body = read_json(
        '{"transactionId": "t1", "currency": "USD", "amount": 90071992547409.93,'
        ' "refundedAmount": 0.1, "processingInfo": {"processingStatus": "success"}}'
    )
    transaction = _transaction(body)
    assert transaction.amount_minor == 9007199254740993  # a float gives ...994
    assert transaction.refunded_minor == 10
    assert transaction.status == "success"


@given(st.integers(min_value=1, max_value=10**17), st.sampled_from(["USD", "EUR", "JPY"]))
def test_every_amount_reads_back_to_its_minor_units(minor: int, currency: str) -> None:
    body = read_json(f'{{"currency": "{currency}", "amount": {from_minor(minor, currency)}}}')
    assert _transaction(body).amount_minor == minor


def test_an_answer_that_is_not_json_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="Expecting value"):
        read_json("<html>")
