"""gRPC handlers of `arbridge.sync.v1.SyncService`.

Handlers translate protobuf to domain calls and back and hold no SQL. Methods
of the v1 contract that this release does not implement yet answer
UNIMPLEMENTED (the runtime maps the base class's NotImplementedError).
"""

from __future__ import annotations

from arbridge.sync.v1 import sync_pb2_grpc


class SyncService(sync_pb2_grpc.SyncServiceServicer):
    """The sync service's gRPC API."""
