"""What a charge keeps of each invoice once refunds went back (posting, open balances), and
what the charge queue says of a charge refunded before it was posted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from arbridge_payments.charges import kept_parts
from arbridge_payments.queue import _outcome as queue_outcome


def test_a_refund_comes_off_the_invoices_last_in_order_first() -> None:
    assert kept_parts([("100", 5), ("99", 5)], 5) == [("99", 5)]  # numeric order
    parts = [("20", 500), ("10", 300), ("30", 200)]
    assert kept_parts(parts, 0) == [("10", 300), ("20", 500), ("30", 200)]
    assert kept_parts(parts, 150) == [("10", 300), ("20", 500), ("30", 50)]
    assert kept_parts(parts, 200) == [("10", 300), ("20", 500)]
    assert kept_parts(parts, 450) == [("10", 300), ("20", 250)]
    assert kept_parts(parts, 1000) == []


@given(
    st.lists(
        st.tuples(st.text("0123456789", min_size=1, max_size=6), st.integers(1, 10**12)),
        min_size=1,
        max_size=20,
        unique_by=lambda p: p[0],
    ),
    st.data(),
)
def test_kept_parts_add_up_to_what_was_not_refunded(
    parts: list[tuple[str, int]], data: st.DataObject
) -> None:
    total = sum(a for _, a in parts)
    refunded = data.draw(st.integers(0, total))
    kept = kept_parts(parts, refunded)
    assert sum(a for _, a in kept) == total - refunded
    whole = dict(parts)
    assert all(0 < a <= whole[r] for r, a in kept)
    # At most one invoice is left part paid, and it is the last one kept.
    assert all(a == whole[r] for r, a in kept[:-1])


def test_the_charge_queue_says_a_charge_refunded_before_posting_collected_nothing() -> None:
    row = {
        "outcome_status": "",
        "phase": "succeeded",
        "posting_state": "refunded",
        "amount_minor": 12050,
        "currency": "USD",
        "kind": "card",
        "last4": "4242",
        "charge_id": "ch_1",
        "intacct_payment_record_no": "",
    }
    outcome = queue_outcome(row)
    assert outcome is not None
    assert outcome.status == "Failed"  # final: the Intacct user charges again by Pending
    assert "refunded in full" in outcome.message
    assert "120.50 USD" in outcome.message
    assert outcome.payment_key == ""
    posted = queue_outcome({**row, "posting_state": "posted", "intacct_payment_record_no": "7"})
    assert posted is not None
    assert (posted.status, posted.payment_key) == ("Paid", "7")
