"""gRPC handlers of `arbridge.rules.v1.RulesService`.

Handlers translate protobuf to domain calls and back and hold no SQL. Methods
of the v1 contract that this release does not implement yet answer
UNIMPLEMENTED (the runtime maps the base class's NotImplementedError).
"""

from __future__ import annotations

from arbridge.rules.v1 import rules_pb2_grpc


class RulesService(rules_pb2_grpc.RulesServiceServicer):
    """The rules service's gRPC API."""
