"""What can go wrong talking to Intacct, in terms a caller can act on.

Each kind is a :class:`~arbridge_runtime.errors.DomainError` with its gRPC
status, so the connector service maps them in the runtime's one place.
Messages name the fix and never carry credentials or session ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from arbridge_runtime.errors import DomainError


@dataclass(frozen=True)
class ErrorDetail:
    """One ``<error>`` block as Intacct sent it."""

    errorno: str
    description: str = ""
    description2: str = ""
    correction: str = ""

    def text(self) -> str:
        parts = [self.errorno, self.description, self.description2, self.correction]
        return " ".join(p for p in parts if p)


class IntacctError(DomainError):
    """Base of every Intacct failure; ``details`` holds Intacct's own error blocks."""

    code = grpc.StatusCode.INTERNAL
    retryable = False

    def __init__(self, message: str, details: Sequence[ErrorDetail] = ()) -> None:
        super().__init__(message)
        self.details = list(details)


class BadCredentials(IntacctError):
    """Intacct refused the sender or user credentials: the admin must fix them."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class MissingPermission(IntacctError):
    """The web-services user lacks a permission the call needs."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Throttled(IntacctError):
    """HTTP 429 / GW-0010, or the per-company limits of arbridge itself."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class IntacctUnavailable(IntacctError):
    """5xx, network failure, or no XML in the answer."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class OutcomeUnknown(IntacctUnavailable):
    """HTTP 524: Intacct may have done the work; only a same-controlid retry is safe."""


class SessionExpired(IntacctError):
    """The session is invalid or expired (handled by one transparent re-login)."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class InvalidRequest(IntacctError):
    """Intacct could not accept the request as built (a bug or bad input)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class RecordFailure(IntacctError):
    """Intacct refused a record (validation, unknown key): not retried automatically."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class MalformedResponse(IntacctError):
    """The response is not a valid Intacct response document."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


DUPLICATE_CONTROLID = "XL03000012"


def classify(details: Sequence[ErrorDetail], *, level: str) -> IntacctError:
    """The error kind for Intacct's error blocks at a level (control, auth, result)."""
    text = " ".join(d.text() for d in details)
    lowered = text.lower()
    first = details[0].errorno if details else ""
    summary = "; ".join(d.description2 or d.description or d.errorno for d in details) or level
    if first == "GW-0010" or "rate limit" in lowered:
        return Throttled(f"Intacct is throttling requests: {summary}", details)
    if "do not have permission" in lowered:
        return MissingPermission(f"missing Intacct permission: {summary}", details)
    if level == "auth" and "invalid session" in lowered:
        return SessionExpired("the Intacct session expired", details)
    if level in ("control", "auth") and (
        first == "XL03000006"
        or "sign-in" in lowered
        or "partner id" in lowered
        or "not authorized" in lowered
        or first == "XMLGW_JPP0002"
    ):
        return BadCredentials(f"Intacct refused the credentials: {summary}", details)
    if "temporarily off-line" in lowered or "try again later" in lowered:
        return IntacctUnavailable(f"Intacct is unavailable: {summary}", details)
    if level == "control":
        return InvalidRequest(f"Intacct refused the request: {summary}", details)
    return RecordFailure(f"Intacct refused it: {summary}", details)
