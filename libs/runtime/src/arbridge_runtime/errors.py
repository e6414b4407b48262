"""Domain errors and their one mapping to gRPC status codes.

Services raise these from domain code; the error interceptor turns them into
gRPC statuses in one place. Messages are written for the caller: what was
wrong and how to fix it. They must never carry secrets or card data (the
interceptor redacts them anyway, as a second line of defence).
"""

from __future__ import annotations

import grpc

from arbridge_runtime.db import TRANSIENT_DB_ERRORS


class DomainError(Exception):
    """Base class: a failure the caller can act on."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    """The request is malformed or a value is out of range."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    """The system is not in a state that allows the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Conflict(DomainError):
    """A concurrent operation holds the resource (e.g. a charge in flight); retry later."""

    code = grpc.StatusCode.ABORTED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(DomainError):
    """Throttled or over a limit; retry with backoff."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(DomainError):
    """A dependency is down; retry with backoff."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(DomainError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message for any exception raised by a handler."""
    if isinstance(exc, DomainError):
        return exc.code, exc.message
    if isinstance(exc, TRANSIENT_DB_ERRORS):
        return (
            grpc.StatusCode.UNAVAILABLE,
            "the service's database is unavailable for the moment; retry the call"
            " (with the same idempotency key, where it has one)",
        )
    if isinstance(exc, NotImplementedError):
        return (
            grpc.StatusCode.UNIMPLEMENTED,
            "this method is part of the v1 contract but this server does not implement it yet",
        )
    return grpc.StatusCode.INTERNAL, "internal error; the request id in the logs identifies it"
