"""Outbound gRPC channels: service token, request id, trace context and a default deadline.

Every call a service makes to another carries the service token, the
current request id (so logs join up across services), the current trace
context (``traceparent``, so the callee's span joins the caller's trace) and
a deadline; a call without an explicit timeout gets the default one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, cast

import grpc
import grpc.aio
import structlog

from arbridge_runtime import tracing

DEFAULT_DEADLINE_SECONDS = 30.0


def _metadata(token: str, existing: Any) -> list[tuple[str, str]]:
    carried = ("authorization", "x-request-id", "traceparent", "tracestate")
    md = [(k, v) for k, v in (existing or ()) if k not in carried]
    bound = structlog.contextvars.get_contextvars()
    request_id = str(bound.get("request_id") or uuid.uuid4().hex)
    md.append(("authorization", f"Bearer {token}"))
    md.append(("x-request-id", request_id))
    trace_context: dict[str, str] = {}
    tracing.inject(trace_context)
    md.extend(trace_context.items())
    return md


class _Outbound:
    def __init__(self, token: str, deadline: float) -> None:
        self._token = token
        self._deadline = deadline

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        timeout = details.timeout if details.timeout is not None else self._deadline
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=timeout,
            metadata=grpc.aio.Metadata(*_metadata(self._token, details.metadata)),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


class _UU(_Outbound, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _US(_Outbound, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _SU(_Outbound, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _SS(_Outbound, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def service_channel(
    target: str, token: str, *, deadline: float = DEFAULT_DEADLINE_SECONDS
) -> grpc.aio.Channel:
    """An insecure channel to another arbridge service that authenticates every call."""
    # grpc-stubs types the interceptor list as "cast or ignore"; these four
    # are grpc.aio interceptors of each call kind.
    interceptors = cast(
        "list[grpc.aio.ClientInterceptor]",
        [_UU(token, deadline), _US(token, deadline), _SU(token, deadline), _SS(token, deadline)],
    )
    return grpc.aio.insecure_channel(target, interceptors=interceptors)
