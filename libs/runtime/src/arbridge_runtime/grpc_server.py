"""The gRPC server bootstrap every service uses.

One interceptor wraps every method handler, whatever its kind (unary or
streaming on either side), so request ids, authentication, access logs,
metrics, draining and error mapping apply to all four RPC kinds alike:

* request id: taken from ``x-request-id`` metadata or minted, bound into the
  log context and sent back as initial metadata;
* authentication: ``authorization: Bearer <token>`` compared in constant time
  with the configured service tokens; health and reflection are exempt so
  that probes and tooling work without a token;
* draining: once shutdown starts, new calls get UNAVAILABLE so that clients
  retry on another replica, and in-flight calls are counted so shutdown can
  wait for them;
* error mapping: :class:`~arbridge_runtime.errors.DomainError` subclasses
  become their status code; anything else becomes INTERNAL with a message
  that carries no internals.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

import grpc
import grpc.aio
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import Span, SpanKind

from arbridge_runtime import tracing
from arbridge_runtime.errors import InvalidArgument, status_for
from arbridge_runtime.metrics import ServiceMetrics
from arbridge_runtime.redaction import redact_text

log = structlog.get_logger(__name__)

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


class CallTracker:
    """Counts in-flight application calls and refuses new ones while draining."""

    def __init__(self) -> None:
        self.active = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.active += 1
        self._idle.clear()

    def exit(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Waits until no call is in flight; False when the timeout passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


def _token_ok(given: str, tokens: Sequence[str]) -> bool:
    # Compare against every token so timing does not reveal which one matched.
    ok = False
    for token in tokens:
        if token and hmac.compare_digest(given.encode(), token.encode()):
            ok = True
    return ok


class _CallPolicy:
    def __init__(
        self, tokens: Sequence[str], tracker: CallTracker, metrics: ServiceMetrics
    ) -> None:
        self.tokens = tuple(tokens)
        self.tracker = tracker
        self.metrics = metrics

    async def begin(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Binds the request id, authenticates, refuses while draining, counts the call."""
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        request_id = metadata.get("x-request-id", "")
        if not _REQUEST_ID_RE.match(request_id):
            request_id = uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id, rpc=method)
        auth = metadata.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not _token_ok(token.strip(), self.tokens):
            self.metrics.rpc_rejected.labels(method=method, reason="unauthenticated").inc()
            log.warning("rpc_unauthenticated", has_authorization=bool(auth))
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid service token: send metadata "
                "'authorization: Bearer <ARBRIDGE_SERVICE_TOKEN>'",
            )
        if self.tracker.draining:
            self.metrics.rpc_rejected.labels(method=method, reason="draining").inc()
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "server is shutting down; retry the call (another replica will take it)",
            )
        await context.send_initial_metadata((("x-request-id", request_id),))
        self.tracker.enter()

    def finish(self, method: str, started: float, code: grpc.StatusCode, tracked: bool) -> None:
        elapsed = time.perf_counter() - started
        self.metrics.rpc_duration.labels(method=method, code=code.name).observe(elapsed)
        if tracked:
            self.tracker.exit()
        log.info("rpc_finished", code=code.name, duration_ms=round(elapsed * 1000, 2))

    async def fail(self, exc: Exception, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        code, message = status_for(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("rpc_internal_error")
        await context.abort(code, redact_text(message))


def _server_span(
    method: str, context: grpc.aio.ServicerContext[Any, Any]
) -> AbstractContextManager[Span]:
    """The call's server span, the child of the trace context its metadata carries."""
    metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    service, _, name = method.lstrip("/").partition("/")
    return tracing.span(
        method.lstrip("/"),
        parent=metadata,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )


def _code_of(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code: object = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, policy: _CallPolicy
) -> grpc.RpcMethodHandler[Any, Any]:
    """Returns a handler of the same kind whose behaviour runs under ``policy``."""

    async def run_unary(
        behavior: Callable[..., Awaitable[Any]],
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Any:
        started = time.perf_counter()
        tracked = False
        code = grpc.StatusCode.OK
        with _server_span(method, context) as span:
            try:
                await policy.begin(method, context)
                tracked = True
                return await behavior(_checked(request, method), context)
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            except Exception as exc:
                code = status_for(exc)[0]
                await policy.fail(exc, context)
            finally:
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                policy.finish(method, started, code, tracked)

    async def run_stream(
        behavior: Callable[..., AsyncIterator[Any]],
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[Any]:
        started = time.perf_counter()
        tracked = False
        code = grpc.StatusCode.OK
        with _server_span(method, context) as span:
            try:
                await policy.begin(method, context)
                tracked = True
                async for item in behavior(_checked(request, method), context):
                    yield item
            except grpc.aio.AbortError:
                code = _code_of(context)
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code = status_for(exc)[0]
                await policy.fail(exc, context)
            finally:
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                policy.finish(method, started, code, tracked)

    kwargs = {
        "request_deserializer": _lenient(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    streaming_out = handler.unary_stream is not None or handler.stream_stream is not None
    inner = cast(
        "Callable[..., Any]",
        handler.unary_unary
        or handler.stream_unary
        or handler.unary_stream
        or handler.stream_stream,
    )
    # grpc.aio picks how to drive a behaviour by inspecting it, so the wrapper
    # must be of the same flavour as the wrapped one: an async generator for
    # generator-style streaming handlers, a coroutine for everything else
    # (including streaming handlers that write through context.write).
    if streaming_out and inspect.isasyncgenfunction(inner):

        async def behaviour_gen(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async for item in run_stream(inner, request, context):
                yield item

        wrapped: Callable[..., Any] = behaviour_gen
    else:

        async def behaviour_coro(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await run_unary(_as_coroutine(inner), request, context)

        wrapped = behaviour_coro
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrapped, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrapped, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrapped, **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrapped, **kwargs)


class _Undecodable:
    """A request message that did not parse; the call is answered INVALID_ARGUMENT."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The generated deserializer, except that bytes that are not a valid message become an
    :class:`_Undecodable` instead of an exception inside grpc (which answers INTERNAL)."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(type(exc).__name__)

    return parse


def _refuse(method: str, bad: _Undecodable) -> InvalidArgument:
    return InvalidArgument(
        f"the request is not a valid message for {method} ({bad.reason}); send the message"
        " type the method's .proto declares"
    )


def _checked(request: Any, method: str) -> Any:
    """Raises INVALID_ARGUMENT for an undecodable request; wraps request streams so that an
    undecodable message in them does the same when it is reached."""
    if isinstance(request, _Undecodable):
        raise _refuse(method, request)
    if hasattr(request, "__aiter__"):

        async def messages() -> AsyncIterator[Any]:
            async for message in request:
                if isinstance(message, _Undecodable):
                    raise _refuse(method, message)
                yield message

        return messages()
    return request


def _as_coroutine(behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Lets a plain function (the generated base servicer's) be awaited like a coroutine."""

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        result = behavior(request, context)
        if inspect.isawaitable(result):
            return await result
        return result

    return call


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Applies the call policy to every method of the server."""

    def __init__(
        self, tokens: Sequence[str], tracker: CallTracker, metrics: ServiceMetrics
    ) -> None:
        self._policy = _CallPolicy(tokens, tracker, metrics)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            # Health and reflection are served as they are: no token needed,
            # so probes and tooling work, and nothing to drain or map.
            return handler
        return _wrap(handler, handler_call_details.method, self._policy)


Registrar = Callable[[Any, grpc.aio.Server], None]


class GrpcServer:
    """A grpc.aio server with health, optional reflection and the call policy."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tokens: Sequence[str],
        metrics: ServiceMetrics,
        reflection_enabled: bool,
    ) -> None:
        self.tracker = CallTracker()
        self.health = HealthServicer()
        self._host = host
        self._port = port
        self._reflection = reflection_enabled
        self._service_names: list[str] = []
        self.server = grpc.aio.server(
            interceptors=[ServiceInterceptor(tokens, self.tracker, metrics)],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = 0

    def add_service(self, register: Registrar, servicer: Any, full_name: str) -> None:
        register(servicer, self.server)
        self._service_names.append(full_name)

    @property
    def service_names(self) -> list[str]:
        return list(self._service_names)

    async def start(self) -> int:
        """Binds and starts serving, with every health status NOT_SERVING."""
        for name in ["", *self._service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._reflection:
            reflection.enable_server_reflection(
                [*self._service_names, "grpc.health.v1.Health", reflection.SERVICE_NAME],
                self.server,
            )
        self.port = self.server.add_insecure_port(f"{self._host}:{self._port}")
        if self.port == 0:
            raise RuntimeError(f"could not bind gRPC port {self._host}:{self._port}")
        await self.server.start()
        return self.port

    async def set_serving(self) -> None:
        for name in ["", *self._service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def begin_shutdown(self) -> None:
        """Health NOT_SERVING for every service; new calls still accepted."""
        await self.health.enter_graceful_shutdown()

    def stop_intake(self) -> None:
        self.tracker.draining = True

    async def drain(self, grace: float) -> bool:
        """Waits for in-flight application calls; False when grace ran out."""
        return await self.tracker.wait_idle(grace)

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)


def names_of(services: Iterable[Any]) -> list[str]:
    """Full names of the services of generated ``*_pb2`` descriptors."""
    return [s.full_name for s in services]
