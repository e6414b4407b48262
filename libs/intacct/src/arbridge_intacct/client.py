"""The Intacct client: sessions, retries, limits and metering around the XML gateway.

* Sessions: ``getAPISession`` (alone in its request) per company and entity;
  every later call goes to the endpoint it returned. The session is renewed
  before its projected timeout, and an "Invalid session" answer gets one
  transparent re-login and retry.
* Retries with jittered exponential backoff: HTTP 429 / ``GW-0010``, 5xx,
  network failures and malformed answers. HTTP 524 means Intacct may have done
  the work: reads are simply repeated, writes are repeated only as they were
  (same function controlids, ``uniqueid=true``), so Intacct refuses whatever
  already ran.
* Limits: every request holds a slot of a :class:`Limiter` (the connector's
  is shared by every replica through PostgreSQL); every function sent is
  counted by a :class:`Meter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import aiohttp
import structlog
from opentelemetry.trace import SpanKind

from arbridge_intacct import request as rq
from arbridge_intacct.errors import (
    DUPLICATE_CONTROLID,
    IntacctError,
    IntacctUnavailable,
    InvalidRequest,
    MalformedResponse,
    OutcomeUnknown,
    SessionExpired,
    Throttled,
    classify,
)
from arbridge_intacct.response import (
    MAX_RESPONSE_BYTES,
    Data,
    Record,
    Response,
    ResponseStructureError,
    Result,
    StreamingResponseReader,
)
from arbridge_runtime import tracing
from arbridge_runtime.dates import us_datetime, wall_epoch_seconds
from arbridge_runtime.xml import XmlRejected

log = structlog.get_logger(__name__)

DEFAULT_ENDPOINT = "https://api.intacct.com/ia/xml/xmlgw.phtml"
QUERY_PAGE = 2000
LOCAL_FORMAT = "%m/%d/%Y %H:%M:%S"


@dataclass(frozen=True)
class Credentials:
    company_id: str
    user_id: str
    user_password: str
    sender_id: str
    sender_password: str
    entity_id: str = ""

    def __repr__(self) -> str:
        return (
            f"Credentials(company_id={self.company_id!r}, user_id={self.user_id!r}, "
            f"sender_id={self.sender_id!r}, entity_id={self.entity_id!r}, passwords=***)"
        )


# How urgently the requests made in this context need one of the company's slots:
# a limiter that orders its waiters serves the highest first. Single calls (a
# write, a read, a permission check) come first; a query walk's first page next;
# then each walk by the pages it has left, so of several walks at once (a sync
# reads six objects through two slots) the longest never waits behind the others.
INTERACTIVE = 1 << 30
WALK_START = 1 << 20
SLOT_PRIORITY: ContextVar[int] = ContextVar("intacct_slot_priority", default=INTERACTIVE)


@dataclass(eq=False)
class SlotHandoff:
    """The next page of a walk, known while the current page's request still holds
    its slot: a limiter may pass that slot straight on (``lease``) instead of freeing
    it, so the walk does not queue behind shorter ones for the slot it just had. The
    limiter resolves ``lease`` either way: with what it passes on, or None."""

    priority: int
    task: asyncio.Future[Any] | None = None
    lease: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


# Set by a request that knows its successor (for the limiter, when the slot is given
# back), and in the successor's own task (where its slot may come from).
SLOT_SUCCESSOR: ContextVar[SlotHandoff | None] = ContextVar("intacct_slot_successor", default=None)
SLOT_INHERITED: ContextVar[SlotHandoff | None] = ContextVar("intacct_slot_inherited", default=None)


class Limiter(Protocol):
    def slot(self, company_id: str) -> AbstractAsyncContextManager[None]: ...


class Meter(Protocol):
    async def record(self, functions: Sequence[str]) -> None: ...


class NoLimit:
    @asynccontextmanager
    async def slot(self, company_id: str) -> AsyncIterator[None]:
        yield


class NoMeter:
    async def record(self, functions: Sequence[str]) -> None:
        return None


@dataclass
class RetryPolicy:
    attempts: int = 10
    base_delay: float = 0.2
    max_delay: float = 10.0

    def delay(self, attempt: int) -> float:
        # Full jitter: spreads retries of many callers after a throttle.
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))  # noqa: S311


@dataclass
class Session:
    session_id: str
    endpoint: str
    location_id: str
    expires_at: datetime
    offset: timedelta

    def __repr__(self) -> str:
        return f"Session(endpoint={self.endpoint!r}, location_id={self.location_id!r}, id=***)"


@dataclass
class WriteOutcome:
    """What became of one write function."""

    controlid: str
    result: Result | None
    already_applied: bool = False

    @property
    def ok(self) -> bool:
        return self.already_applied or (self.result is not None and self.result.ok)


@dataclass
class IntacctClient:
    """One company (and entity) of Intacct, as one web-services user."""

    http: aiohttp.ClientSession
    credentials: Credentials
    endpoint: str = DEFAULT_ENDPOINT
    time_zone: str = ""
    limiter: Limiter = field(default_factory=NoLimit)
    meter: Meter = field(default_factory=NoMeter)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    refresh_margin: timedelta = timedelta(minutes=5)
    request_timeout: float = 300.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _session: Session | None = None
    _session_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # Time ----------------------------------------------------------------------------

    @property
    def tz(self) -> tzinfo:
        """The company's time zone: configured, else the offset Intacct reports."""
        if self.time_zone:
            return ZoneInfo(self.time_zone)
        offset = self._session.offset if self._session else timedelta(0)
        return timezone(offset)

    def to_local(self, moment: datetime) -> str:
        """A UTC moment as Intacct compares WHENMODIFIED: company-local MM/DD/YYYY HH:MM:SS."""
        return moment.astimezone(self.tz).strftime(LOCAL_FORMAT)

    def from_local(self, text: str) -> datetime | None:
        """Intacct's company-local timestamp (or date) as a UTC moment."""
        if not text:
            return None
        naive = us_datetime(text)
        if naive is None:
            fmt = LOCAL_FORMAT if len(text) > 10 else "%m/%d/%Y"
            try:
                naive = datetime.strptime(text, fmt)
            except ValueError:
                return None
        return naive.replace(tzinfo=self.tz).astimezone(UTC)

    def epoch_from_local(self, text: str) -> int | None:
        """``from_local`` as whole seconds since the epoch, with no aware datetime made
        on the way: the connector stamps every record it streams with it."""
        naive = us_datetime(text) if text else None
        if naive is None:  # empty, or a form only strptime reads
            moment = self.from_local(text)
            return None if moment is None else wall_epoch_seconds(moment, None)
        return wall_epoch_seconds(naive, self.tz)

    # Sessions --------------------------------------------------------------------------

    async def session(self) -> Session:
        async with self._session_lock:
            now = datetime.now(UTC)
            if self._session and self._session.expires_at - self.refresh_margin > now:
                return self._session
            self._session = await self._new_session()
            return self._session

    def _drop_session(self, session: Session) -> None:
        if self._session is session:
            self._session = None

    async def _new_session(self) -> Session:
        login = rq.Login(
            self.credentials.user_id,
            self.credentials.company_id,
            self.credentials.user_password,
            self.credentials.entity_id,
        )
        function = rq.Function(
            "getAPISession", rq.get_api_session(self.credentials.entity_id or None)
        )
        body = rq.envelope(
            sender_id=self.credentials.sender_id,
            sender_password=self.credentials.sender_password,
            functions=[function],
            login=login,
            controlid="sessionProvider",
        )
        response = await self._send(self.endpoint, body, [function.name], write=False)
        result = response.results[0]
        if not result.ok or not result.data or not result.data.records:
            raise classify(result.errors, level="result")
        api = result.data.records[0]
        auth = response.authentication
        stamp = (
            datetime.fromisoformat(auth.sessiontimestamp)
            if auth and auth.sessiontimestamp
            else datetime.now(UTC)
        )
        timeout = (
            datetime.fromisoformat(auth.sessiontimeout)
            if auth and auth.sessiontimeout
            else datetime.now(UTC) + timedelta(hours=1)
        )
        offset = stamp.utcoffset() or timedelta(0)
        return Session(
            session_id=str(api.get("sessionid", "")),
            endpoint=str(api.get("endpoint") or self.endpoint),
            location_id=str(api.get("locationid", "")),
            expires_at=timeout.astimezone(UTC),
            offset=offset,
        )

    # Calls -----------------------------------------------------------------------------

    async def execute(
        self,
        functions: Sequence[rq.Function],
        *,
        transaction: bool = False,
        record_tag: str | None = None,
        on_body: Callable[[list[bytes]], None] | None = None,
    ) -> Response:
        """Runs functions in one request with session auth; retries as the module says.

        ``record_tag`` names the element of the records expected back (the
        queried object), which lets the parser skip everything else.
        """
        write = any(f.write for f in functions)
        relogged = False
        while True:
            session = await self.session()
            body = rq.envelope(
                sender_id=self.credentials.sender_id,
                sender_password=self.credentials.sender_password,
                functions=functions,
                session_id=session.session_id,
                unique=write,
                transaction=transaction,
            )
            try:
                response = await self._send(
                    session.endpoint,
                    body,
                    [f.name for f in functions],
                    write=write,
                    record_tag=record_tag,
                    on_body=on_body,
                )
            except SessionExpired:
                self._drop_session(session)
                if relogged:
                    raise
                relogged = True
                continue
            # Each answer projects the sliding timeout: keep the renewal point current.
            auth = response.authentication
            if auth is not None and auth.sessiontimeout:
                with contextlib.suppress(ValueError):
                    session.expires_at = datetime.fromisoformat(auth.sessiontimeout).astimezone(UTC)
            return response

    async def _send(
        self,
        endpoint: str,
        body: bytes,
        names: Sequence[str],
        *,
        write: bool,
        record_tag: str | None = None,
        on_body: Callable[[list[bytes]], None] | None = None,
    ) -> Response:
        """POSTs with retries; returns a response whose control and auth succeeded."""
        last: IntacctError | None = None
        for attempt in range(self.retry.attempts):
            if attempt:
                await self.sleep(self.retry.delay(attempt))
            try:
                response = await self._post_once(endpoint, body, names, record_tag, on_body)
            except (Throttled, IntacctUnavailable, MalformedResponse) as exc:
                last = exc
                if isinstance(exc, OutcomeUnknown) and write:
                    log.info("intacct_outcome_unknown_retrying_same_controlids")
                continue
            return response
        assert last is not None
        raise last

    async def _post_once(
        self,
        endpoint: str,
        body: bytes,
        names: Sequence[str],
        record_tag: str | None = None,
        on_body: Callable[[list[bytes]], None] | None = None,
    ) -> Response:
        """One POST. ``on_body`` sees the answer's bytes (in chunks) before they are
        decoded, once they are all in."""
        reader = StreamingResponseReader(record_tag=record_tag)
        functions = ",".join(dict.fromkeys(names))
        async with self.limiter.slot(self.credentials.company_id):
            with tracing.span(
                f"intacct {functions}",
                kind=SpanKind.CLIENT,
                attributes={"intacct.functions": functions, "intacct.calls": len(names)},
            ):
                try:
                    async with self.http.post(
                        endpoint,
                        data=body,
                        headers={
                            "Content-Type": "application/xml",
                            "Accept-Encoding": "gzip, deflate",
                        },
                        timeout=aiohttp.ClientTimeout(total=self.request_timeout),
                    ) as reply:
                        if reply.status == 429:
                            raise Throttled("Intacct answered 429 (GW-0010): rate limited")
                        if reply.status == 524:
                            raise OutcomeUnknown("Intacct answered 524: the outcome is unknown")
                        if reply.status >= 500:
                            raise IntacctUnavailable(f"Intacct answered HTTP {reply.status}")
                        chunks: list[bytes] = []
                        size = 0
                        async for chunk in reply.content.iter_chunked(65536):
                            size += len(chunk)
                            if size > MAX_RESPONSE_BYTES:
                                raise MalformedResponse(
                                    "Intacct sent an invalid response: larger than "
                                    f"{MAX_RESPONSE_BYTES} bytes"
                                )
                            chunks.append(chunk)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise IntacctUnavailable(
                        f"could not reach Intacct: {type(exc).__name__}"
                    ) from None
            if on_body is not None:
                on_body(chunks)  # may name this slot's successor (SLOT_SUCCESSOR)
        # Intacct's part ends when its answer is in: the slot goes to the next call
        # while this one is decoded (a page of 2,000 records takes tens of ms).
        records: list[Record] = []
        try:
            for chunk in chunks:
                records.extend(reader.feed(chunk))
                # Decoding a page takes tens of ms: others (the next call waiting for
                # this slot among them) get the loop between its chunks.
                await asyncio.sleep(0)
            records.extend(reader.end())
            response = reader.close()
        except (XmlRejected, ResponseStructureError) as exc:
            raise MalformedResponse(f"Intacct sent an invalid response: {exc}") from None
        finally:
            chunks.clear()
        _attach(response, records, reader.record_results)
        await self.meter.record(names)
        if response.control_status != "success":
            raise classify(response.control_errors, level="control")
        for operation in response.operations:
            if operation.authentication.status != "success":
                raise classify(operation.errors, level="auth")
        return response

    # Reading ---------------------------------------------------------------------------

    async def stream_query(
        self,
        object_name: str,
        fields: Sequence[str],
        *,
        conditions: Sequence[rq.Condition] = (),
        show_private: bool = False,
        docparid: str = "",
        page_size: int = QUERY_PAGE,
        key_field: str = "RECORDNO",
    ) -> AsyncGenerator[tuple[Data, list[Record]], None]:
        """Pages of records ordered by RECORDNO, walked by key, not by offset.

        Each page asks for records with ``RECORDNO > last``: a record changed
        during the walk is neither repeated nor skipped for moving between
        pages, and a retried page never repeats what was already handed out.
        The first page's ``totalcount`` is the total; a walk costs the
        minimum number of calls, ceil(total / page_size).
        """
        fields = list(dict.fromkeys([key_field, *fields]))

        taken = 0  # pages the reader has come back for more after

        async def page(
            number: int,
            last: int | None,
            pages_left: int,
            hint: _Hint,
            inherited: SlotHandoff | None,
        ) -> Data:
            # This task's own context: its priority, and the slot it may inherit.
            SLOT_PRIORITY.set(pages_left)
            SLOT_INHERITED.set(inherited)
            SLOT_SUCCESSOR.set(None)
            if inherited is not None:
                inherited.task = None  # the limiter has what it needed; no cycle to keep
            keyed = list(conditions)
            if last is not None:
                keyed.append(rq.Condition("greaterthan", key_field, (str(last),)))
            body = rq.query(
                object_name,
                fields,
                conditions=keyed,
                order_by=[(key_field, True)],
                page_size=page_size,
                show_private=show_private,
                docparid=docparid,
            )

            def peek(chunks: list[bytes]) -> None:
                # The next page is asked for now, before this answer is decoded and
                # while this request still holds its slot, which may pass to it;
                # unless the reader is still on the page before this one (a walk
                # stays one page ahead of its reader).
                if hint.done() or taken < number - 1:
                    return
                found = peek_page(chunks, key_field)
                if found is None or found[1] <= 0:
                    return
                asked = ask(number + 1, found[0], left_after(found[1]), inherits=True)
                SLOT_SUCCESSOR.set(asked[2])
                hint.set_result((found[0], asked[:2]))

            try:
                response = await self.execute(
                    [rq.Function("q", body)], record_tag=object_name, on_body=peek
                )
            finally:
                # A limiter that passes no slots leaves the successor named here: this
                # page's context must not keep the next page (and so every page) alive.
                SLOT_SUCCESSOR.set(None)
            result = response.results[0]
            if not result.ok:
                raise classify(result.errors, level="result")
            return result.data or Data()

        def ask(
            number: int, last: int | None, pages_left: int, *, inherits: bool = False
        ) -> tuple[_Hint, asyncio.Future[Data], SlotHandoff | None]:
            hint: _Hint = asyncio.get_running_loop().create_future()
            handoff = SlotHandoff(pages_left) if inherits else None
            task = asyncio.ensure_future(page(number, last, pages_left, hint, handoff))
            if handoff is not None:
                handoff.task = task  # before it runs: the task starts on the loop's next turn
            return hint, task, handoff

        def left_after(remaining: int) -> int:
            return min(WALK_START - 1, -(-remaining // page_size))

        # The next page is asked for as soon as this one's last key is known: from
        # the answer's bytes, before they are decoded (checked against the decoded
        # page, and asked again in the rare case they differ), and while this page is
        # handed out. The walk goes at Intacct's pace, not the decoder's or the reader's.
        current: tuple[_Hint, asyncio.Future[Data]] | None = ask(1, None, WALK_START)[:2]
        number = 1
        guessed: tuple[int, tuple[_Hint, asyncio.Future[Data]]] | None = None
        try:
            while current is not None:
                hint, pending = current
                await asyncio.wait((hint, pending), return_when=asyncio.FIRST_COMPLETED)
                if hint.done():
                    guessed = hint.result()  # (the key it follows, the page already asked)
                data = await pending
                current = None
                records = data.records
                if records and (data.numremaining or 0) > 0:
                    last = str(records[-1].get(key_field, ""))
                    if not last.isdigit():
                        raise MalformedResponse(
                            f"a {object_name} page's last record has no numeric {key_field}"
                        )
                    if guessed is not None and guessed[0] == int(last):
                        current = guessed[1]
                    else:
                        left = left_after(data.numremaining or 0)
                        current = ask(number + 1, int(last), left)[:2]
                    number += 1
                if guessed is not None and current is not guessed[1]:
                    guessed[1][1].cancel()  # asked for after a wrong guess: not needed
                    log.warning("intacct_walk_guess_differed", object=object_name)
                guessed = None
                yield data, records
                taken += 1
        finally:
            asked = [c[1] for c in (current, guessed and guessed[1]) if c is not None]
            for future in asked:
                future.cancel()
            await asyncio.gather(*asked, return_exceptions=True)

    # Writing ---------------------------------------------------------------------------

    async def write(
        self, functions: Sequence[rq.Function], *, per_request: int = 5
    ) -> list[WriteOutcome]:
        """Runs write functions, several per request, each under its own stable controlid.

        A function Intacct refuses as a repeat (``uniqueid=true``) already ran:
        it is reported ``already_applied``.
        """
        outcomes: list[WriteOutcome] = []
        for start in range(0, len(functions), per_request):
            chunk = functions[start : start + per_request]
            response = await self.execute(chunk)
            by_controlid = {r.controlid: r for r in response.results}
            for function in chunk:
                result = by_controlid.get(function.controlid)
                if result is None:
                    raise InvalidRequest(
                        f"Intacct gave no result for function {function.controlid}"
                    )
                duplicate = not result.ok and any(
                    e.errorno == DUPLICATE_CONTROLID for e in result.errors
                )
                outcomes.append(WriteOutcome(function.controlid, result, already_applied=duplicate))
        return outcomes


# The next page of a walk, asked for before this one was decoded: the key it follows,
# and its (hint, page) pair.
_Hint = asyncio.Future[tuple[int, tuple[Any, asyncio.Future[Any]]]]
_NUMREMAINING = re.compile(rb'<data\b[^>]*\bnumremaining="(\d+)"')


def peek_page(chunks: Sequence[bytes], key_field: str) -> tuple[int, int] | None:
    """A query page's last key and ``numremaining``, read from its bytes before they
    are decoded (None when they do not show them plainly)."""
    if not chunks:
        return None
    remaining = _NUMREMAINING.search(chunks[0])
    tail = b"".join(chunks[-2:])  # a record spanning more than a chunk would be unusual
    tag = f"<{key_field}>".encode()
    at = tail.rfind(tag)
    if remaining is None or at < 0:
        return None
    end = tail.find(b"<", at + len(tag))
    key = tail[at + len(tag) : end]
    if end < 0 or not key.isdigit():
        return None
    return int(key), int(remaining.group(1))


def _attach(response: Response, records: list[Record], owners: list[int]) -> None:
    """Gives the streamed records back to the results that held them."""
    results = response.results
    for record, owner in zip(records, owners, strict=True):
        data = results[owner].data if 0 <= owner < len(results) else None
        if data is not None:
            data.records.append(record)
