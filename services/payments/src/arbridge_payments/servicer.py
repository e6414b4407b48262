"""gRPC handlers of `arbridge.payments.v1.PaymentsService`.

Handlers translate protobuf to domain calls and back and hold no SQL. Methods
of the v1 contract that this release does not implement yet answer
UNIMPLEMENTED (the runtime maps the base class's NotImplementedError).
"""

from __future__ import annotations

from arbridge.payments.v1 import payments_pb2_grpc


class PaymentsService(payments_pb2_grpc.PaymentsServiceServicer):
    """The payments service's gRPC API."""
