"""Prometheus metrics of one service, in a registry the service owns.

No module-level metric objects: each :class:`ServiceMetrics` has its own
registry, so several services (or tests) in one process never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServiceMetrics:
    """The runtime's standard metrics; services add their own to ``registry``."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.service = service
        self.rpc_duration = Histogram(
            "arbridge_rpc_duration_seconds",
            "gRPC handling time by method and status code",
            ["method", "code"],
            registry=self.registry,
            buckets=_RPC_BUCKETS,
        )
        self.http_duration = Histogram(
            "arbridge_http_request_duration_seconds",
            "Public HTTP handling time (webhooks, pay pages) by route template and status",
            ["route", "status"],
            registry=self.registry,
            buckets=_RPC_BUCKETS,
        )
        self.rpc_rejected = Counter(
            "arbridge_rpc_rejected_total",
            "gRPC calls refused before reaching a handler",
            ["method", "reason"],
            registry=self.registry,
        )
        self.outbox_published = Counter(
            "arbridge_outbox_published_total",
            "Outbox events published to JetStream",
            registry=self.registry,
        )
        self.outbox_depth = Gauge(
            "arbridge_outbox_depth", "Outbox events not yet published", registry=self.registry
        )
        self.outbox_publish_errors = Counter(
            "arbridge_outbox_publish_errors_total",
            "Failed outbox publish attempts",
            registry=self.registry,
        )
        self.messages_handled = Counter(
            "arbridge_messages_handled_total",
            "JetStream messages by consumer and outcome",
            ["consumer", "outcome"],
            registry=self.registry,
        )
        self.message_duration = Histogram(
            "arbridge_message_duration_seconds",
            "JetStream message handling time",
            ["consumer"],
            registry=self.registry,
            buckets=_RPC_BUCKETS,
        )
        self.consumer_pending = Gauge(
            "arbridge_consumer_pending_messages",
            "Messages waiting for a consumer (lag)",
            ["consumer"],
            registry=self.registry,
        )
