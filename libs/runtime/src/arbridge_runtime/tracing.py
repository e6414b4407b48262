"""OpenTelemetry traces that follow one piece of work across services.

The trace context (W3C ``traceparent``/``tracestate``) travels with the work:

* in gRPC metadata, injected by the outbound channel and read by the server's
  call policy, whose server span wraps the handler;
* in NATS message headers: the gateway puts it on each stored webhook event,
  the outbox stores it with every event (the context of the transaction that
  wrote the event) and the relay publishes it, and each consumer's span is a
  child of the context its message carries;
* in database rows that hand work to a background loop later (a rule's
  scheduled charge, a payment waiting to be posted): the row keeps the
  ``traceparent`` of the work that wrote it and the loop resumes it.

Exporters: OTLP over HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, the usual OpenTelemetry way;
JSON lines appended to ``ARBRIDGE_TRACE_FILE`` when that is set (what the
tests and ``make demo`` read). With neither, no span is recorded, but the
context still passes through, so a trace is not cut by a service that does
not export. Log lines carry ``trace_id`` and ``span_id`` (see ``logs``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

TRACEPARENT = "traceparent"
_provider: TracerProvider | None = None


class JsonLinesExporter(SpanExporter):
    """Appends each finished span as one JSON object per line (several processes may
    share the file: each line is written by one ``write`` of an ``O_APPEND`` file)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(_span_json(s), separators=(",", ":")) + "\n" for s in spans)
        with self._lock:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, lines.encode())
            finally:
                os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def _span_json(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    parent = span.parent
    resource = span.resource.attributes if span.resource else {}
    return {
        "trace_id": f"{ctx.trace_id:032x}" if ctx else "",
        "span_id": f"{ctx.span_id:016x}" if ctx else "",
        "parent_span_id": f"{parent.span_id:016x}" if parent else "",
        "name": span.name,
        "kind": span.kind.name,
        "service": str(resource.get("service.name", "")),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {k: v for k, v in (span.attributes or {}).items()},
    }


def configure_tracing(service: str, *, trace_file: str = "") -> None:
    """Installs the process's tracer provider with the exporters the environment asks for.

    Does nothing (context still propagates) when no exporter is configured.
    """
    global _provider
    otlp = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not otlp and not trace_file:
        return
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": f"arbridge-{service}", "arbridge.service": service}
        )
    )
    if trace_file:
        provider.add_span_processor(
            BatchSpanProcessor(JsonLinesExporter(trace_file), schedule_delay_millis=200)
        )
    if otlp:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider


def shutdown_tracing() -> None:
    """Flushes the spans not yet exported (the service runner calls it on the way out)."""
    if _provider is not None:
        _provider.force_flush(5000)
        _provider.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer("arbridge")


def inject(carrier: MutableMapping[str, str]) -> None:
    """Adds the current trace context (``traceparent``, ``tracestate``) to ``carrier``."""
    propagate.inject(carrier)


def traceparent() -> str:
    """The current context as a ``traceparent`` value ('' outside any trace)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT, "")


def extract(carrier: Mapping[str, str]) -> otel_context.Context:
    """The context a message's headers or a call's metadata carry (header names in any case)."""
    lowered = {k.lower(): v for k, v in carrier.items() if isinstance(v, str)}
    return propagate.extract(lowered)


@contextmanager
def span(
    name: str,
    *,
    parent: Mapping[str, str] | str | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A span made current for the block.

    ``parent``: a carrier (headers, metadata) or a stored ``traceparent``; the
    span is the child of that context instead of the current one. An
    exception leaving the block marks the span as an error and goes on.
    """
    ctx: otel_context.Context | None = None
    if isinstance(parent, str):
        ctx = extract({TRACEPARENT: parent}) if parent else None
    elif parent is not None:
        ctx = extract(parent)
    with tracer().start_as_current_span(
        name,
        context=ctx,
        kind=kind,
        attributes=dict(attributes or {}),
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def ids() -> tuple[str, str]:
    """The current trace and span ids in hex, or two empty strings outside a trace."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
