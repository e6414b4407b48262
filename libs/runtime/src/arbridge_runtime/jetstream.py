"""NATS JetStream: connection, streams, the transactional outbox and consumers.

* :class:`Namespace` prefixes every stream and subject, so several suites (or
  test runs) can share one NATS server without seeing each other's events.
* :class:`Outbox` writes events in the caller's transaction;
  :class:`OutboxRelay` publishes them with ``Nats-Msg-Id`` set to the event id
  (``<row id>.<position>`` for the events of a bundle row, which holds the
  events one transaction wrote together) and marks a row only after JetStream
  acknowledged every event in it. A crash between the
  acknowledgement and the mark republishes the row: JetStream drops the
  duplicate inside its window and consumers' inboxes drop it after.
* :class:`JetStreamConsumer` is a durable pull consumer with explicit acks.
  The handler's effect and the inbox row commit in one transaction, so a
  redelivery (a crash after the commit and before the ack) changes nothing.
  Retryable failures are nak'ed with backoff; after the configured deliveries
  (or at once, for a poison message) the message is recorded as a dead letter
  and terminated, so it is never redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    StorageType,
    StreamConfig,
)
from opentelemetry.trace import SpanKind

from arbridge_runtime import tracing
from arbridge_runtime.db import TRANSIENT_DB_ERRORS, Notifier, stop_listening
from arbridge_runtime.faults import NO_FAULTS, FaultInjector
from arbridge_runtime.metrics import ServiceMetrics
from arbridge_runtime.redaction import redact_text

log = structlog.get_logger(__name__)

MSG_ID = "Nats-Msg-Id"
LAG_INTERVAL_SECONDS = 5.0


class _Message(Protocol):
    def SerializeToString(self) -> bytes: ...  # noqa: N802 (protobuf's name)


@dataclass(frozen=True)
class Namespace:
    """A prefix for streams and subjects; empty in a dedicated deployment."""

    prefix: str = ""

    def stream(self, name: str) -> str:
        return f"{self.prefix.upper()}_{name}" if self.prefix else name

    def subject(self, subject: str) -> str:
        return f"{self.prefix}.{subject}" if self.prefix else subject

    def unprefix(self, subject: str) -> str:
        head = f"{self.prefix}."
        return subject[len(head) :] if self.prefix and subject.startswith(head) else subject

    def consumer(self, durable: str) -> str:
        return f"{self.prefix}_{durable}" if self.prefix else durable


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream; subjects are given without the namespace."""

    name: str
    subjects: tuple[str, ...]
    duplicate_window_seconds: float = 600.0
    max_age_seconds: float = 7 * 24 * 3600.0
    description: str = ""


async def connect(url: str, name: str) -> NatsClient:
    """Connects to NATS and keeps reconnecting for ever when the server goes away."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", error=str(exc))

    async def on_disconnect() -> None:
        log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        log.info("nats_reconnected")

    return await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=3,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


async def ensure_streams(
    js: JetStreamContext, namespace: Namespace, specs: Sequence[StreamSpec]
) -> None:
    """Creates each stream, or brings an existing one to the declared config."""
    for spec in specs:
        config = StreamConfig(
            name=namespace.stream(spec.name),
            description=spec.description or None,
            subjects=[namespace.subject(s) for s in spec.subjects],
            storage=StorageType.FILE,
            duplicate_window=spec.duplicate_window_seconds,
            max_age=spec.max_age_seconds,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)


class Outbox:
    """Writes events into the outbox table inside the caller's transaction."""

    async def add(
        self,
        conn: asyncpg.Connection,
        subject: str,
        message: _Message | bytes,
        *,
        event_id: uuid.UUID | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> uuid.UUID:
        """Records one event; it is published once the transaction commits.

        ``event_id`` makes the event itself idempotent: the same id written
        twice is stored once (the second insert does nothing).
        """
        payload = message if isinstance(message, bytes) else message.SerializeToString()
        identifier = event_id or uuid.uuid4()
        stored = dict(headers or {})
        tracing.inject(stored)  # the consumer's span continues the writer's trace
        await conn.execute(
            "INSERT INTO outbox (id, subject, payload, headers) VALUES ($1, $2, $3, $4::jsonb)"
            " ON CONFLICT (id) DO NOTHING",
            identifier,
            subject,
            payload,
            json.dumps(stored),
        )
        return identifier

    async def add_many(
        self, conn: asyncpg.Connection, events: Sequence[tuple[str, _Message | bytes]]
    ) -> None:
        """Records several events as one bundle row, inside the caller's transaction.

        Each event is still published on its own, with the message id
        ``<row id>.<position>``; the bundle spares PostgreSQL a row, its index
        entries and its later update per event.
        """
        if not events:
            return
        headers: dict[str, str] = {}
        tracing.inject(headers)
        await conn.execute(
            "INSERT INTO outbox (id, subjects, payloads, headers)"
            " VALUES (gen_random_uuid(), $1::text[], $2::bytea[], $3::jsonb)",
            [subject for subject, _ in events],
            [m if isinstance(m, bytes) else m.SerializeToString() for _, m in events],
            json.dumps(headers),
        )


@dataclass
class OutboxRelay:
    """Publishes the outbox to JetStream; several relays may run at once."""

    pool: asyncpg.Pool
    js: JetStreamContext
    namespace: Namespace
    schema: str
    metrics: ServiceMetrics
    batch_size: int = 500
    # A batch's stored payloads at most (always its first row): sync jobs' bundles
    # are up to 256 KiB each, and 500 of them would be a lot to hold at once.
    batch_bytes: int = 8 * 1024 * 1024
    poll_interval: float = 1.0
    publish_timeout: float = 5.0
    retention_seconds: float = 7 * 24 * 3600.0
    faults: FaultInjector = NO_FAULTS
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def channel(self) -> str:
        return f"arbridge_outbox_{self.schema}"

    async def run(self, stop: asyncio.Event) -> None:
        notifier = Notifier(self.pool, self.channel)
        self._wake = notifier.wake
        listening = asyncio.create_task(notifier.run(stop))
        backoff = 0.1
        last_reap = 0.0
        try:
            while not stop.is_set():
                try:
                    more = await self.publish_batch()
                    backoff = 0.1
                except Exception as exc:
                    self.metrics.outbox_publish_errors.inc()
                    log.warning(
                        "outbox_publish_failed",
                        error=redact_text(str(exc)) or type(exc).__name__,
                        retry_in=backoff,
                    )
                    await _sleep_or_stop(stop, backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if time.monotonic() - last_reap > 300:
                    last_reap = time.monotonic()
                    with contextlib.suppress(*TRANSIENT_DB_ERRORS):
                        await self._reap()
                if more:
                    continue
                self._wake.clear()
                await _wait_any(stop, self._wake, self.poll_interval)
        finally:
            await stop_listening(listening)

    async def publish_batch(self) -> bool:
        """Publishes up to one batch (``batch_size`` events, ``batch_bytes`` of
        payloads); whether the batch was full (more may be waiting)."""
        async with self.pool.acquire() as conn, conn.transaction():
            # Rows in order, as many as fit the batch's events and bytes (always the
            # first: a bundle larger than a batch goes alone). Rows locked beyond
            # that stay unread here and free again at commit.
            rows = await conn.fetch(
                "WITH locked AS (SELECT seq, coalesce(cardinality(subjects), 1) AS n,"
                " coalesce(pg_column_size(payload), 0) + coalesce(pg_column_size(payloads), 0)"
                " AS b FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1"
                " FOR UPDATE SKIP LOCKED),"
                " chosen AS (SELECT seq FROM (SELECT seq, n, b, sum(n) OVER w AS upto,"
                " sum(b) OVER w AS bytes_upto FROM locked WINDOW w AS (ORDER BY seq)) t"
                " WHERE upto - n < $1 AND bytes_upto - b < $2)"
                " SELECT seq, id::text AS id, subject, payload, subjects, payloads, headers"
                " FROM outbox WHERE seq = ANY(ARRAY(SELECT seq FROM chosen)) ORDER BY seq",
                self.batch_size,
                self.batch_bytes,
            )
            if not rows:
                self.metrics.outbox_depth.set(0)
                return False
            results = await self._publish(rows)
            self.faults.hit("outbox.after_publish")
            acked = [row["seq"] for row, error in zip(rows, results, strict=True) if error is None]
            failed = [row["seq"] for row, error in zip(rows, results, strict=True) if error]
            if acked:
                await conn.execute(
                    "UPDATE outbox SET published_at = now(), attempts = attempts + 1"
                    " WHERE seq = ANY($1::bigint[])",
                    acked,
                )
            if failed:
                first = next(r for r in results if r is not None)
                await conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = $2"
                    " WHERE seq = ANY($1::bigint[])",
                    failed,
                    type(first).__name__,
                )
        published = sum(_events_in(row) for row, e in zip(rows, results, strict=True) if e is None)
        self.metrics.outbox_published.inc(published)
        read = sum(_events_in(row) for row in rows)
        # (Stored sizes may be compressed: payloads this large may have filled the batch.)
        full = (
            read >= self.batch_size
            or len(rows) >= self.batch_size
            or sum(_bytes_in(row) for row in rows) >= self.batch_bytes
        )
        if not full:
            # Every unpublished row was in this batch.
            self.metrics.outbox_depth.set(read - published)
        else:
            async with self.pool.acquire() as conn:
                self.metrics.outbox_depth.set(await _depth(conn))
        if failed:
            raise OutboxPublishError(f"{len(failed)} of {len(rows)} outbox rows not acknowledged")
        return full

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> list[BaseException | None]:
        """Publishes rows' events without waiting for each acknowledgement in turn
        (JetStream's asynchronous publish), then waits for all; for each row, the
        first error of its events, or None."""
        results: list[BaseException | None] = [None] * len(rows)
        sent: list[tuple[int, asyncio.Future[Any]]] = []
        decoded: dict[str, dict[str, str]] = {}  # a batch's rows mostly share their headers
        for position, row in enumerate(rows):
            stored = row["headers"]
            if stored not in decoded:
                decoded[stored] = {str(k): str(v) for k, v in json.loads(stored).items()}
            common = decoded[stored]
            if row["subjects"] is None:
                events = [(row["subject"], row["payload"], row["id"])]
            else:
                events = [
                    (subject, payload, f"{row['id']}.{n}")
                    for n, (subject, payload) in enumerate(
                        zip(row["subjects"], row["payloads"], strict=True), 1
                    )
                ]
            for subject, payload, message_id in events:
                try:
                    sent.append(
                        (
                            position,
                            await self.js.publish_async(
                                self.namespace.subject(subject),
                                payload,
                                # No stall timeout: a batch is far below the client's
                                # limit of pending publishes, and waiting with a timeout
                                # would hand each message to the socket on its own.
                                wait_stall=None,
                                headers={**common, MSG_ID: message_id},
                            ),
                        )
                    )
                except Exception as exc:
                    results[position] = results[position] or exc
        if sent:
            _, late = await asyncio.wait([f for _, f in sent], timeout=self.publish_timeout)
            for future in late:
                future.cancel()
        for position, future in sent:
            if results[position] is not None:
                continue
            if future.cancelled():
                results[position] = TimeoutError("no acknowledgement from JetStream in time")
            elif future.exception() is not None:
                results[position] = future.exception()
        return results

    async def _reap(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)",
                self.retention_seconds,
            )
            self.metrics.outbox_depth.set(await _depth(conn))


def _events_in(row: asyncpg.Record) -> int:
    return 1 if row["subjects"] is None else len(row["subjects"])


def _bytes_in(row: asyncpg.Record) -> int:
    if row["payloads"] is None:
        return len(row["payload"] or b"")
    return sum(len(p) for p in row["payloads"])


async def _depth(conn: asyncpg.Connection) -> int:
    """Events not yet published (a bundle counts each of its events)."""
    return int(
        await conn.fetchval(
            "SELECT coalesce(sum(coalesce(cardinality(subjects), 1)), 0) FROM outbox"
            " WHERE published_at IS NULL"
        )
    )


class OutboxPublishError(Exception):
    """Some events were not acknowledged by JetStream; they will be retried."""


class _HandlerFailed(Exception):
    """A handler failed inside a batch: which message, and how to settle it."""

    def __init__(self, position: int, outcome: tuple[str, str]) -> None:
        super().__init__(outcome[1])
        self.position = position
        self.outcome = outcome


class RetryableError(Exception):
    """A transient failure: the message is nak'ed and redelivered after a backoff."""


class PoisonMessage(Exception):
    """The message can never be handled: dead-letter it now, do not retry."""


@dataclass(frozen=True)
class Delivery:
    """A message as a handler sees it (subject without the namespace)."""

    subject: str
    data: bytes
    headers: Mapping[str, str]
    message_id: str
    num_delivered: int
    stream_seq: int


Handler = Callable[[asyncpg.Connection, Delivery], Awaitable[None]]


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer; names and subjects are given without the namespace."""

    durable: str
    stream: str
    subjects: tuple[str, ...]
    max_deliver: int = 5
    backoff_seconds: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0)
    ack_wait_seconds: float = 60.0
    # A batch still being handled is kept from redelivery this long at most.
    max_in_progress_seconds: float = 600.0
    max_ack_pending: int = 1000
    batch: int = 64


class JetStreamConsumer:
    """Runs one handler over a durable pull consumer, idempotently."""

    def __init__(
        self,
        *,
        spec: ConsumerSpec,
        handler: Handler,
        js: JetStreamContext,
        pool: asyncpg.Pool,
        namespace: Namespace,
        metrics: ServiceMetrics,
        faults: FaultInjector = NO_FAULTS,
    ) -> None:
        self.spec = spec
        self.handler = handler
        self.js = js
        self.pool = pool
        self.namespace = namespace
        self.metrics = metrics
        self.faults = faults

    @property
    def name(self) -> str:
        return self.spec.durable

    async def ensure(self) -> None:
        subjects = [self.namespace.subject(s) for s in self.spec.subjects]
        config = ConsumerConfig(
            durable_name=self.namespace.consumer(self.spec.durable),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.spec.ack_wait_seconds,
            # Redelivery is bounded by this consumer itself (it dead-letters
            # and terms), so that a handler crashing the process still ends
            # in a dead-letter record rather than a silent server-side stop.
            max_deliver=-1,
            max_ack_pending=self.spec.max_ack_pending,
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=subjects if len(subjects) > 1 else None,
        )
        await self.js.add_consumer(self.namespace.stream(self.spec.stream), config)

    async def run(self, stop: asyncio.Event) -> None:
        await self.ensure()
        sub = await self.js.pull_subscribe_bind(
            durable=self.namespace.consumer(self.spec.durable),
            stream=self.namespace.stream(self.spec.stream),
        )
        lag_read = 0.0
        try:
            while not stop.is_set():
                if time.monotonic() - lag_read > LAG_INTERVAL_SECONDS:
                    lag_read = time.monotonic()
                    await self._read_lag(sub)
                try:
                    messages = await sub.fetch(self.spec.batch, timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except Exception as exc:
                    # Disconnected, reconnecting, or JetStream briefly unavailable:
                    # keep trying; messages wait in the stream meanwhile.
                    log.warning(
                        "consumer_fetch_failed", consumer=self.name, error=type(exc).__name__
                    )
                    await _sleep_or_stop(stop, 0.5)
                    continue
                await self.process(messages)
        finally:
            await _quietly(sub.unsubscribe())

    async def _read_lag(self, sub: Any) -> None:
        """Sets the consumer's lag gauge: messages not yet delivered plus those not yet acked."""
        try:
            info = await sub.consumer_info()
        except Exception as exc:
            log.debug("consumer_info_failed", consumer=self.name, error=type(exc).__name__)
            return
        lag = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        self.metrics.consumer_pending.labels(self.name).set(lag)

    async def process(self, messages: list[Msg]) -> None:
        """Handles a fetched batch: one transaction, one savepoint per message.

        Each message's inbox row and effect commit together (its savepoint is
        rolled back alone when its handler fails), the batch commits once,
        and only then are messages acked, nak'ed or dead-lettered. A crash
        before the commit redelivers the whole batch; a crash after it
        redelivers messages whose effects the inbox already holds.
        """
        started = time.perf_counter()
        consumer = self.name
        deliveries = [_delivery(m, self.namespace) for m in messages]
        outcomes: list[tuple[str, str]] = [("", "")] * len(messages)
        for index, delivery in enumerate(deliveries):
            if delivery.num_delivered > self.spec.max_deliver:
                outcomes[index] = (
                    "dead",
                    "gave up after the maximum deliveries "
                    "(the handler crashed or timed out each time)",
                )
        pending = [i for i, o in enumerate(outcomes) if not o[0]]
        # A long batch (a sync job's bundles hold hundreds of records each) must not
        # be handed to another replica while this one still works on it.
        keepalive = asyncio.create_task(self._keep_in_progress(messages))
        try:
            async with self.pool.acquire() as conn:
                try:
                    # Fast path: the whole batch in one transaction, one inbox insert.
                    async with conn.transaction():
                        fast = await self._handle_batch(conn, [deliveries[i] for i in pending])
                    for index, settled in zip(pending, fast, strict=True):
                        outcomes[index] = settled
                except _HandlerFailed as failed:
                    # One handler failed: that message is settled by its error (its
                    # handler is not run again now); the rest are redone one by one,
                    # each in its own savepoint, so one failure holds back no other.
                    culprit = pending[failed.position]
                    outcomes[culprit] = failed.outcome
                    async with conn.transaction():
                        for index in pending:
                            if index != culprit:
                                outcomes[index] = await self._handle_one(conn, deliveries[index])
        except Exception as exc:
            # The batch did not commit (database trouble): nothing happened; retry it all.
            failure = redact_text(str(exc)) or type(exc).__name__
            log.warning("consumer_batch_failed", consumer=consumer, error=failure)
            outcomes = [("retry", failure) if o[0] != "dead" else o for o in outcomes]
        finally:
            keepalive.cancel()
            await asyncio.gather(keepalive, return_exceptions=True)
        self.faults.hit("consumer.after_commit")
        for msg, delivery, (outcome, reason) in zip(messages, deliveries, outcomes, strict=True):
            await self._settle(msg, delivery, outcome, reason)
        elapsed = time.perf_counter() - started
        if messages:
            self.metrics.message_duration.labels(consumer).observe(elapsed / len(messages))

    async def _keep_in_progress(self, messages: list[Msg]) -> None:
        """Every third of the ack wait, tells JetStream the batch is still being
        handled (``+WPI``), which restarts each message's ack wait; for
        ``max_in_progress_seconds`` at most, so that a batch stuck for good is
        delivered again (and dead-lettered after ``max_deliver`` deliveries)."""
        deadline = time.monotonic() + self.spec.max_in_progress_seconds
        while True:
            await asyncio.sleep(self.spec.ack_wait_seconds / 3)
            if time.monotonic() > deadline:
                return
            for msg in messages:
                await _quietly(msg.in_progress())

    async def _handle_batch(
        self, conn: asyncpg.Connection, deliveries: list[Delivery]
    ) -> list[tuple[str, str]]:
        if not deliveries:
            return []
        rows = await conn.fetch(
            "INSERT INTO inbox (consumer, message_id) SELECT $1, unnest($2::text[])"
            " ON CONFLICT DO NOTHING RETURNING message_id",
            self.name,
            [d.message_id for d in deliveries],
        )
        new = {r["message_id"] for r in rows}
        outcomes: list[tuple[str, str]] = []
        for position, delivery in enumerate(deliveries):
            if delivery.message_id in new:
                new.discard(delivery.message_id)  # a duplicate inside the batch runs once
                with (
                    self._span(delivery),
                    structlog.contextvars.bound_contextvars(
                        consumer=self.name, message_id=delivery.message_id, subject=delivery.subject
                    ),
                ):
                    try:
                        await self.handler(conn, delivery)
                    except PoisonMessage as exc:
                        raise _HandlerFailed(position, ("poison", redact_text(str(exc)))) from exc
                    except Exception as exc:
                        reason = redact_text(str(exc)) or type(exc).__name__
                        raise _HandlerFailed(position, ("retry", reason)) from exc
                outcomes.append(("handled", ""))
            else:
                outcomes.append(("duplicate", ""))
        return outcomes

    def _span(self, delivery: Delivery) -> AbstractContextManager[Any]:
        """The handler's span: a child of the trace context the message carries."""
        return tracing.span(
            f"{delivery.subject} process",
            parent=delivery.headers,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": delivery.subject,
                "messaging.consumer.group.name": self.name,
                "messaging.message.id": delivery.message_id,
            },
        )

    async def _handle_one(self, conn: asyncpg.Connection, delivery: Delivery) -> tuple[str, str]:
        with (
            self._span(delivery),
            structlog.contextvars.bound_contextvars(
                consumer=self.name, message_id=delivery.message_id, subject=delivery.subject
            ),
        ):
            try:
                async with conn.transaction():
                    first = await conn.fetchval(
                        "INSERT INTO inbox (consumer, message_id) VALUES ($1, $2)"
                        " ON CONFLICT DO NOTHING RETURNING true",
                        self.name,
                        delivery.message_id,
                    )
                    if first:
                        await self.handler(conn, delivery)
            except PoisonMessage as exc:
                return "poison", redact_text(str(exc))
            except Exception as exc:
                return "retry", redact_text(str(exc)) or type(exc).__name__
            return ("handled" if first else "duplicate"), ""

    async def _settle(self, msg: Msg, delivery: Delivery, outcome: str, reason: str) -> None:
        consumer = self.name
        if outcome in ("handled", "duplicate"):
            self.metrics.messages_handled.labels(consumer, outcome).inc()
            # The effect is committed: a lost ack only means a redelivery,
            # which the inbox turns into a no-op.
            await _quietly(msg.ack())
            return
        if outcome == "retry" and delivery.num_delivered < self.spec.max_deliver:
            delays = self.spec.backoff_seconds
            delay = delays[min(delivery.num_delivered - 1, len(delays) - 1)]
            await _quietly(msg.nak(delay=delay))
            self.metrics.messages_handled.labels(consumer, "retry").inc()
            log.info(
                "message_retry",
                consumer=consumer,
                message_id=delivery.message_id,
                error=reason,
                retry_in=delay,
                deliveries=delivery.num_delivered,
            )
            return
        if outcome == "poison":
            error = f"poison message: {reason}"
        elif outcome == "retry":
            error = f"failed {delivery.num_delivered} deliveries; last error: {reason}"
        else:
            error = reason
        try:
            await self._dead_letter(delivery, error)
        except Exception as exc:
            log.warning("dead_letter_failed", consumer=consumer, error=type(exc).__name__)
            await _quietly(msg.nak(delay=self.spec.backoff_seconds[-1]))
            return
        await _quietly(msg.term())
        self.metrics.messages_handled.labels(consumer, "dead_letter").inc()
        log.warning(
            "message_dead_lettered", consumer=consumer, message_id=delivery.message_id, reason=error
        )

    async def _dead_letter(self, delivery: Delivery, error: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO dead_letters (consumer, message_id, subject, stream_seq, deliveries,"
                " payload, headers, error) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)"
                " ON CONFLICT (consumer, message_id)"
                " DO UPDATE SET deliveries = EXCLUDED.deliveries,"
                " error = EXCLUDED.error",
                self.name,
                delivery.message_id,
                delivery.subject,
                delivery.stream_seq,
                delivery.num_delivered,
                delivery.data,
                json.dumps(dict(delivery.headers)),
                redact_text(error),
            )


def _delivery(msg: Msg, namespace: Namespace) -> Delivery:
    headers = dict(msg.headers or {})
    meta = msg.metadata
    stream_seq = int(meta.sequence.stream) if meta and meta.sequence else 0
    stream_name = meta.stream if meta else ""
    message_id = headers.get(MSG_ID) or f"{stream_name}:{stream_seq}"
    return Delivery(
        subject=namespace.unprefix(msg.subject),
        data=msg.data,
        headers=headers,
        message_id=message_id,
        num_delivered=int(meta.num_delivered) if meta else 1,
        stream_seq=stream_seq,
    )


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception as exc:
        log.debug("ignored_error", error=type(exc).__name__)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
