"""gRPC handlers of `arbridge.connector.v1.ConnectorService`.

Handlers translate protobuf to domain calls and back and hold no SQL. Methods
of the v1 contract that this release does not implement yet answer
UNIMPLEMENTED (the runtime maps the base class's NotImplementedError).
"""

from __future__ import annotations

from arbridge.connector.v1 import connector_pb2_grpc


class ConnectorService(connector_pb2_grpc.ConnectorServiceServicer):
    """The connector service's gRPC API."""
