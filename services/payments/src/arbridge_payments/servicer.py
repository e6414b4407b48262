"""gRPC handlers of `arbridge.payments.v1.PaymentsService`.

Handlers translate protobuf to domain calls and back and hold no SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arbridge.common.v1 import common_pb2
from arbridge.payments.v1 import payments_pb2, payments_pb2_grpc
from arbridge_payments.charges import ChargeRequest, Charges, ChargeView, InvoicePart
from arbridge_payments.links import Link, Links
from arbridge_payments.methods import PaymentMethod, PaymentMethods
from arbridge_payments.posting import DepositAccount, Posting
from arbridge_payments.refunds import Refunds
from arbridge_runtime.errors import InvalidArgument
from arbridge_runtime.paging import next_page, page_size

_TYPES = {"card": common_pb2.PAYMENT_METHOD_TYPE_CARD, "ach": common_pb2.PAYMENT_METHOD_TYPE_ACH}
_STATES = {
    "pending": payments_pb2.CHARGE_STATE_PENDING,
    "processing": payments_pb2.CHARGE_STATE_PROCESSING,
    "settling": payments_pb2.CHARGE_STATE_SETTLING,
    "succeeded": payments_pb2.CHARGE_STATE_SUCCEEDED,
    "declined": payments_pb2.CHARGE_STATE_DECLINED,
    "failed": payments_pb2.CHARGE_STATE_FAILED,
}
_SOURCES = {
    payments_pb2.CHARGE_SOURCE_UNSPECIFIED: "api",
    payments_pb2.CHARGE_SOURCE_API: "api",
    payments_pb2.CHARGE_SOURCE_LINK: "link",
    payments_pb2.CHARGE_SOURCE_RULE: "rule",
    payments_pb2.CHARGE_SOURCE_INTACCT_QUEUE: "intacct_queue",
}
# "api" maps back to CHARGE_SOURCE_API (the later entry), not UNSPECIFIED.
_SOURCE_ENUMS = {name: value for value, name in _SOURCES.items()}


_LINK_KINDS = {
    payments_pb2.LINK_KIND_PAYMENT: "payment",
    payments_pb2.LINK_KIND_PAY_BALANCE: "pay_balance",
    payments_pb2.LINK_KIND_PAYMENT_METHOD: "payment_method",
}
_LINK_ENUMS = {name: value for value, name in _LINK_KINDS.items()}


def link_message(link: Link) -> payments_pb2.Link:
    message = payments_pb2.Link(
        link_id=link.link_id,
        account_id=link.account_id,
        kind=_LINK_ENUMS[link.kind],
        customer_id=link.customer_id,
        invoice_record_no=link.invoice_record_no,
        url=link.url,
        revoked=link.revoked_at is not None,
    )
    message.expires_at.FromDatetime(link.expires_at)
    message.created_at.FromDatetime(link.created_at)
    return message


def _deposit_message(account: DepositAccount) -> payments_pb2.DepositAccount:
    message = payments_pb2.DepositAccount(
        account_id=account.account_id, entity_id=account.entity_id, currency=account.currency
    )
    if account.bank_account_id:
        message.bank_account_id = account.bank_account_id
    else:
        message.undeposited_funds_gl_account = account.undeposited_funds_gl_account
    return message


_POSTING = {
    "pending": payments_pb2.POSTING_STATE_PENDING,
    "posted": payments_pb2.POSTING_STATE_POSTED,
    "refused": payments_pb2.POSTING_STATE_REFUSED,
    "refunded": payments_pb2.POSTING_STATE_REFUNDED,
}


def _money(minor: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=minor, currency=currency)


def _state(row: dict[str, Any]) -> payments_pb2.ChargeState.ValueType:
    if row["phase"] == "succeeded" and row["refunded_minor"]:
        if row["refunded_minor"] >= row["amount_minor"]:
            return payments_pb2.CHARGE_STATE_REFUNDED
        return payments_pb2.CHARGE_STATE_PARTIALLY_REFUNDED
    return _STATES[row["phase"]]


def charge_message(view: ChargeView) -> payments_pb2.Charge:
    row = view.row
    message = payments_pb2.Charge(
        charge_id=row["charge_id"],
        account_id=row["account_id"],
        customer_id=row["customer_id"],
        invoices=[
            payments_pb2.InvoiceAmount(
                invoice_record_no=record_no, amount=_money(amount, row["currency"])
            )
            for record_no, amount in view.invoices
        ],
        amount=_money(row["amount_minor"], row["currency"]),
        payment_method_id=row["payment_method_id"],
        state=_state(row),
        source=_SOURCE_ENUMS[row["source"]],
        gateway_transaction_id=row["gateway_transaction_id"],
        failure_reason=row["failure_reason"],
        failure_code=row["failure_code"],
        refunded=_money(row["refunded_minor"], row["currency"]),
        posting_state=_POSTING[row["posting_state"]],
        intacct_payment_record_no=row["intacct_payment_record_no"],
        level2=payments_pb2.Level2Data(
            tax_amount=_money(row["tax_minor"], row["currency"]),
            customer_reference=row["customer_reference"],
        ),
        rule_id=row["rule_id"],
        idempotency_key=row["idempotency_key"],
    )
    message.created_at.FromDatetime(row["created_at"])
    message.updated_at.FromDatetime(row["updated_at"])
    return message


def method_message(method: PaymentMethod) -> payments_pb2.PaymentMethod:
    message = payments_pb2.PaymentMethod(
        payment_method_id=method.payment_method_id,
        account_id=method.account_id,
        customer_id=method.customer_id,
        type=_TYPES[method.kind],
        brand=method.brand,
        last4=method.last4,
        exp_month=method.exp_month,
        exp_year=method.exp_year,
        fingerprint=method.fingerprint,
        is_default=method.is_default,
        bank_account_type=method.bank_account_type,
    )
    message.created_at.FromDatetime(method.created_at)
    return message


class PaymentsService(payments_pb2_grpc.PaymentsServiceServicer):
    """The payments service's gRPC API."""

    def __init__(
        self,
        methods: PaymentMethods,
        charges: Charges,
        refunds: Refunds,
        links: Links,
        posting: Posting,
    ) -> None:
        self._methods = methods
        self._charges = charges
        self._refunds = refunds
        self._links = links
        self._posting = posting

    async def SetDepositAccount(
        self, request: payments_pb2.SetDepositAccountRequest, context: Any
    ) -> payments_pb2.SetDepositAccountResponse:
        given = request.deposit_account
        saved = await self._posting.set_deposit_account(
            DepositAccount(
                account_id=given.account_id,
                entity_id=given.entity_id,
                currency=given.currency,
                bank_account_id=given.bank_account_id,
                undeposited_funds_gl_account=given.undeposited_funds_gl_account,
            )
        )
        return payments_pb2.SetDepositAccountResponse(deposit_account=_deposit_message(saved))

    async def ListDepositAccounts(
        self, request: payments_pb2.ListDepositAccountsRequest, context: Any
    ) -> payments_pb2.ListDepositAccountsResponse:
        accounts = await self._posting.deposit_accounts(request.account_id)
        return payments_pb2.ListDepositAccountsResponse(
            deposit_accounts=[_deposit_message(a) for a in accounts]
        )

    async def CreateLink(
        self, request: payments_pb2.CreateLinkRequest, context: Any
    ) -> payments_pb2.CreateLinkResponse:
        link = await self._links.create(
            account_id=request.account_id,
            kind=_LINK_KINDS.get(request.kind, ""),
            customer_id=request.customer_id,
            invoice_record_no=request.invoice_record_no,
            ttl_seconds=request.ttl_seconds,
        )
        return payments_pb2.CreateLinkResponse(link=link_message(link))

    async def ListLinks(
        self, request: payments_pb2.ListLinksRequest, context: Any
    ) -> payments_pb2.ListLinksResponse:
        links = await self._links.list_links(
            request.account_id,
            request.customer_id,
            request.invoice_record_no,
            request.include_inactive,
        )
        return payments_pb2.ListLinksResponse(links=[link_message(x) for x in links])

    async def RevokeLink(
        self, request: payments_pb2.RevokeLinkRequest, context: Any
    ) -> payments_pb2.RevokeLinkResponse:
        link = await self._links.revoke(request.account_id, request.link_id)
        return payments_pb2.RevokeLinkResponse(link=link_message(link))

    async def RefundCharge(
        self, request: payments_pb2.RefundChargeRequest, context: Any
    ) -> payments_pb2.RefundChargeResponse:
        amount = request.amount if request.HasField("amount") else None
        charge = await self._charges.get(request.account_id, request.charge_id)
        if amount is not None and amount.currency and amount.currency != charge.row["currency"]:
            raise InvalidArgument(
                f"the refund is in {amount.currency}, but charge {request.charge_id} is in "
                f"{charge.row['currency']}"
            )
        refund, view = await self._refunds.refund(
            account_id=request.account_id,
            charge_id=request.charge_id,
            amount_minor=amount.amount_minor if amount is not None else None,
            reason=request.reason,
            idempotency_key=request.idempotency_key,
        )
        return payments_pb2.RefundChargeResponse(
            refund=_refund_message(refund, view.row["currency"]), charge=charge_message(view)
        )

    async def ResolveRefund(
        self, request: payments_pb2.ResolveRefundRequest, context: Any
    ) -> payments_pb2.ResolveRefundResponse:
        sent = {
            payments_pb2.REFUND_RESOLUTION_SENT: True,
            payments_pb2.REFUND_RESOLUTION_NOT_SENT: False,
        }.get(request.resolution)
        if sent is None:
            raise InvalidArgument(
                "resolution must be REFUND_RESOLUTION_SENT (the gateway's console shows the "
                "refund, its refund_id as the reason) or REFUND_RESOLUTION_NOT_SENT"
            )
        refund, view = await self._refunds.resolve(request.account_id, request.refund_id, sent)
        return payments_pb2.ResolveRefundResponse(
            refund=_refund_message(refund, view.row["currency"]), charge=charge_message(view)
        )

    async def ChargeInvoices(
        self, request: payments_pb2.ChargeInvoicesRequest, context: Any
    ) -> payments_pb2.ChargeInvoicesResponse:
        if request.include_level3:
            raise InvalidArgument(
                "Level 3 line-item data is not supported; leave include_level3 unset "
                "(Level 2 tax and customer reference are sent)"
            )
        expected = request.expected_total if request.HasField("expected_total") else None
        view, replayed = await self._charges.charge(
            ChargeRequest(
                account_id=request.account_id,
                idempotency_key=request.idempotency_key,
                customer_id=request.customer_id,
                invoices=tuple(
                    InvoicePart(
                        record_no=i.invoice_record_no,
                        amount_minor=i.amount.amount_minor if i.HasField("amount") else None,
                        # (An unset one reads as ""; one with both set is refused.)
                        currency=i.amount.currency or i.maximum.currency,
                        maximum_minor=i.maximum.amount_minor if i.HasField("maximum") else None,
                    )
                    for i in request.invoices
                ),
                payment_method_id=request.payment_method_id,
                expected_total_minor=expected.amount_minor if expected else None,
                expected_currency=expected.currency if expected else "",
                source=_SOURCES.get(request.source, "unknown"),
                rule_id=request.rule_id,
            )
        )
        return payments_pb2.ChargeInvoicesResponse(charge=charge_message(view), replayed=replayed)

    async def ListCharges(
        self, request: payments_pb2.ListChargesRequest, context: Any
    ) -> payments_pb2.ListChargesResponse:
        size = page_size(request.page)
        views = await self._charges.list_charges(
            request.account_id,
            request.customer_id,
            request.invoice_record_no,
            size,
            request.page.page_token,
        )
        return payments_pb2.ListChargesResponse(
            charges=[charge_message(v) for v in views[:size]],
            page=next_page([v.row for v in views], size, "charge_id"),
        )

    async def GetCharge(
        self, request: payments_pb2.GetChargeRequest, context: Any
    ) -> payments_pb2.GetChargeResponse:
        view = await self._charges.get(request.account_id, request.charge_id)
        return payments_pb2.GetChargeResponse(charge=charge_message(view))

    async def AddPaymentMethod(
        self, request: payments_pb2.AddPaymentMethodRequest, context: Any
    ) -> payments_pb2.AddPaymentMethodResponse:
        kinds = {
            common_pb2.PAYMENT_METHOD_TYPE_UNSPECIFIED: "",
            common_pb2.PAYMENT_METHOD_TYPE_CARD: "card",
            common_pb2.PAYMENT_METHOD_TYPE_ACH: "ach",
        }
        if request.type not in kinds:
            raise InvalidArgument(f"type {request.type} is not a payment method type")
        method, on_file, replaced = await self._methods.add(
            account_id=request.account_id,
            customer_id=request.customer_id,
            token=request.gateway_token,
            make_default=request.make_default,
            idempotency_key=request.idempotency_key,
            kind=kinds[request.type],
        )
        return payments_pb2.AddPaymentMethodResponse(
            payment_method=method_message(method),
            already_on_file=on_file,
            replaced_payment_method_id=replaced,
        )

    async def ListPaymentMethods(
        self, request: payments_pb2.ListPaymentMethodsRequest, context: Any
    ) -> payments_pb2.ListPaymentMethodsResponse:
        methods = await self._methods.for_customer(request.account_id, request.customer_id)
        return payments_pb2.ListPaymentMethodsResponse(
            payment_methods=[method_message(m) for m in methods]
        )

    async def SetDefaultPaymentMethod(
        self, request: payments_pb2.SetDefaultPaymentMethodRequest, context: Any
    ) -> payments_pb2.SetDefaultPaymentMethodResponse:
        method = await self._methods.set_default(request.account_id, request.payment_method_id)
        return payments_pb2.SetDefaultPaymentMethodResponse(payment_method=method_message(method))

    async def RemovePaymentMethod(
        self, request: payments_pb2.RemovePaymentMethodRequest, context: Any
    ) -> payments_pb2.RemovePaymentMethodResponse:
        await self._methods.remove(request.account_id, request.payment_method_id)
        return payments_pb2.RemovePaymentMethodResponse()


def _refund_message(refund: Mapping[str, Any], currency: str) -> payments_pb2.Refund:
    message = payments_pb2.Refund(
        refund_id=refund["refund_id"],
        charge_id=refund["charge_id"],
        amount=_money(refund["amount_minor"], currency),
        reason=refund["reason"],
        state=refund["phase"],
    )
    message.created_at.FromDatetime(refund["created_at"])
    return message
