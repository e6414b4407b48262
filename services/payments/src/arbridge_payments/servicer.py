"""gRPC handlers of `arbridge.payments.v1.PaymentsService`.

Handlers translate protobuf to domain calls and back and hold no SQL. Methods
of the v1 contract that this release does not implement yet answer
UNIMPLEMENTED (the runtime maps the base class's NotImplementedError).
"""

from __future__ import annotations

from typing import Any

from arbridge.common.v1 import common_pb2
from arbridge.payments.v1 import payments_pb2, payments_pb2_grpc
from arbridge_payments.methods import PaymentMethod, PaymentMethods
from arbridge_runtime.errors import FailedPrecondition, InvalidArgument

_TYPES = {"card": common_pb2.PAYMENT_METHOD_TYPE_CARD, "ach": common_pb2.PAYMENT_METHOD_TYPE_ACH}


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

    def __init__(self, methods: PaymentMethods) -> None:
        self._methods = methods

    async def AddPaymentMethod(
        self, request: payments_pb2.AddPaymentMethodRequest, context: Any
    ) -> payments_pb2.AddPaymentMethodResponse:
        if request.type == common_pb2.PAYMENT_METHOD_TYPE_ACH:
            raise FailedPrecondition(
                "ACH bank accounts are not added through the API yet; "
                "add a card (type PAYMENT_METHOD_TYPE_CARD)"
            )
        if request.type not in (
            common_pb2.PAYMENT_METHOD_TYPE_CARD,
            common_pb2.PAYMENT_METHOD_TYPE_UNSPECIFIED,
        ):
            raise InvalidArgument(f"type {request.type} is not a payment method type")
        method, on_file = await self._methods.add_card(
            account_id=request.account_id,
            customer_id=request.customer_id,
            card_token=request.gateway_token,
            make_default=request.make_default,
            idempotency_key=request.idempotency_key,
        )
        return payments_pb2.AddPaymentMethodResponse(
            payment_method=method_message(method), already_on_file=on_file
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
