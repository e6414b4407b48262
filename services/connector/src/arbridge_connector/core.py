"""The connector's domain: accounts, and every Intacct operation other services need.

No gRPC here: the servicer translates protobuf to these calls and back. One
:class:`~arbridge_intacct.client.IntacctClient` is kept per account (its
session reused across calls), built from credentials decrypted just in time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
import asyncpg
import structlog
from prometheus_client import Counter

from arbridge.events.v1 import events_pb2
from arbridge_connector import repository as repo
from arbridge_connector.crypto import CredentialCipher, Secrets
from arbridge_connector.limits import PgLimiter, PgMeter
from arbridge_connector.objects import IntacctObject
from arbridge_connector.permissions import REQUIRED, Required, where_to_fix
from arbridge_intacct import request as rq
from arbridge_intacct.client import Credentials, IntacctClient, WriteOutcome
from arbridge_intacct.errors import BadCredentials, ErrorDetail, IntacctError, RecordFailure
from arbridge_intacct.response import Record, as_rows, flatten
from arbridge_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from arbridge_runtime.jetstream import Outbox

log = structlog.get_logger(__name__)

# No dots: the account id is a token of NATS subjects (intacct.events.<account_id>).
_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,127}$")


@dataclass(frozen=True)
class ConnectRequest:
    account_id: str
    company_id: str
    user_id: str
    user_password: str
    sender_id: str
    sender_password: str
    entity_id: str = ""
    endpoint_url: str = ""
    time_zone: str = ""

    def __repr__(self) -> str:
        return (
            f"ConnectRequest(account_id={self.account_id!r}, company_id={self.company_id!r}, "
            f"user_id={self.user_id!r}, sender_id={self.sender_id!r}, passwords=***)"
        )


@dataclass(frozen=True)
class PermissionResult:
    required: Required
    status: str  # granted | missing | not_applicable
    fix: str = ""


@dataclass(frozen=True)
class Write:
    operation: str  # create | update | delete
    record_no: str
    fields: dict[str, str]
    idempotency_key: str


@dataclass
class WriteResult:
    idempotency_key: str
    ok: bool
    record_no: str = ""
    already_applied: bool = False
    errors: list[ErrorDetail] = field(default_factory=list)


@dataclass
class Connector:
    pool: asyncpg.Pool
    http: aiohttp.ClientSession
    cipher: CredentialCipher
    outbox: Outbox
    default_endpoint: str
    concurrency: int
    rate_per_second: float
    # arbridge_intacct_api_calls_total{account_id, function}, when the service exports metrics.
    api_calls: Counter | None = None
    _clients: dict[str, IntacctClient] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _limiter(self) -> PgLimiter:
        return PgLimiter(self.pool, self.concurrency, self.rate_per_second)

    # Accounts -------------------------------------------------------------------------

    async def connect(self, req: ConnectRequest) -> repo.AccountRow:
        problems = []
        if not _ACCOUNT_ID.match(req.account_id):
            problems.append("account_id must be 1-128 letters, digits, '_', ':' or '-'")
        for name in ("company_id", "user_id", "user_password", "sender_id", "sender_password"):
            if not getattr(req, name):
                problems.append(f"{name} is required")
        if req.time_zone:
            try:
                ZoneInfo(req.time_zone)
            except (ZoneInfoNotFoundError, ValueError):
                problems.append(f"time_zone {req.time_zone!r} is not an IANA time zone")
        endpoint = req.endpoint_url or self.default_endpoint
        if not endpoint.startswith(("https://", "http://")):
            problems.append("endpoint_url must be an http(s) URL")
        if problems:
            raise InvalidArgument("cannot connect the account: " + "; ".join(problems))
        credentials = Credentials(
            req.company_id,
            req.user_id,
            req.user_password,
            req.sender_id,
            req.sender_password,
            req.entity_id,
        )
        client = IntacctClient(
            self.http,
            credentials,
            endpoint=endpoint,
            time_zone=req.time_zone,
            limiter=self._limiter(),
            meter=PgMeter(self.pool, req.account_id, self.api_calls),
        )
        await client.session()  # a real session, or Intacct's reason why not
        entities = await client.execute(
            [
                rq.Function("entities", rq.query("LOCATIONENTITY", ["RECORDNO"], page_size=1)),
                rq.Function("perms", rq.get_user_permissions(req.user_id)),
            ]
        )
        entity_result, perms_result = entities.results
        multi_entity = bool(
            entity_result.ok and entity_result.data and (entity_result.data.totalcount or 0) > 0
        )
        platform = perms_result.ok and has_platform(granted_policies(perms_result))
        account = repo.AccountRow(
            account_id=req.account_id,
            company_id=req.company_id,
            user_id=req.user_id,
            sender_id=req.sender_id,
            entity_id=req.entity_id,
            endpoint_url=endpoint,
            time_zone=req.time_zone,
            multi_entity=multi_entity,
            platform_services=platform,
            state="connected",
            connected_at=datetime.now(UTC),
        )
        sealed = self.cipher.seal(req.account_id, Secrets(req.user_password, req.sender_password))
        async with self.pool.acquire() as conn, conn.transaction():
            await repo.upsert_account(conn, account, sealed)
            event = events_pb2.AccountConnectionChanged(
                account_id=req.account_id,
                connected=True,
                company_id=req.company_id,
                entity_id=req.entity_id,
                time_zone=req.time_zone,
                platform_services=platform,
            )
            event.occurred_at.GetCurrentTime()
            await self.outbox.add(conn, "connector.account.connected", event)
            stored = await repo.get_account(conn, req.account_id)
        async with self._lock:
            self._clients[req.account_id] = client
        log.info(
            "account_connected",
            account_id=req.account_id,
            company_id=req.company_id,
            multi_entity=multi_entity,
            platform_services=platform,
        )
        assert stored is not None
        return stored

    async def account(self, account_id: str) -> repo.AccountRow:
        async with self.pool.acquire() as conn:
            row = await repo.get_account(conn, account_id)
        if row is None:
            raise NotFound(f"no account {account_id!r}; connect it with ConnectAccount first")
        return row

    async def disconnect(self, account_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if not await repo.disconnect(conn, account_id):
                raise NotFound(f"no account {account_id!r}")
            event = events_pb2.AccountConnectionChanged(account_id=account_id, connected=False)
            event.occurred_at.GetCurrentTime()
            await self.outbox.add(conn, "connector.account.disconnected", event)
        async with self._lock:
            self._clients.pop(account_id, None)
        log.info("account_disconnected", account_id=account_id)

    async def rotate_keys(self) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await repo.all_sealed(conn)
            rotated = 0
            for account_id, sealed in rows:
                if sealed.key_id == self.cipher.primary:
                    continue
                secrets = self.cipher.open(account_id, sealed)
                await repo.replace_sealed(conn, account_id, self.cipher.seal(account_id, secrets))
                rotated += 1
        log.info("credentials_rotated", rotated=rotated, key_id=self.cipher.primary)
        return rotated

    async def client(self, account_id: str) -> IntacctClient:
        async with self._lock:
            cached = self._clients.get(account_id)
        if cached is not None:
            return cached
        async with self.pool.acquire() as conn:
            row = await repo.get_account(conn, account_id)
            sealed = await repo.get_sealed(conn, account_id)
        if row is None:
            raise NotFound(f"no account {account_id!r}; connect it with ConnectAccount first")
        if row.state != "connected" or sealed is None:
            raise FailedPrecondition(
                f"account {account_id!r} is {row.state}; reconnect it with ConnectAccount"
            )
        secrets = self.cipher.open(account_id, sealed)
        client = IntacctClient(
            self.http,
            Credentials(
                row.company_id,
                row.user_id,
                secrets.user_password,
                row.sender_id,
                secrets.sender_password,
                row.entity_id,
            ),
            endpoint=row.endpoint_url,
            time_zone=row.time_zone,
            limiter=self._limiter(),
            meter=PgMeter(self.pool, account_id, self.api_calls),
        )
        async with self._lock:
            self._clients.setdefault(account_id, client)
            return self._clients[account_id]

    async def _guard(self, account_id: str, error: IntacctError) -> None:
        if isinstance(error, BadCredentials):
            async with self.pool.acquire() as conn:
                await repo.set_state(conn, account_id, "credentials_rejected")
            async with self._lock:
                self._clients.pop(account_id, None)

    # Permissions ------------------------------------------------------------------------

    async def check_permissions(self, account_id: str) -> tuple[list[PermissionResult], bool, int]:
        row = await self.account(account_id)
        client = await self.client(account_id)
        response = await client.execute(
            [rq.Function("perms", rq.get_user_permissions(row.user_id))]
        )
        perms_result = response.results[0]
        if not perms_result.ok:
            raise RecordFailure(
                "Intacct would not list the user's permissions: "
                + "; ".join(e.text() for e in perms_result.errors),
                perms_result.errors,
            )
        granted = granted_policies(perms_result)
        platform = has_platform(granted)
        results = []
        for required in REQUIRED:
            if required.platform and not platform:
                results.append(
                    PermissionResult(
                        required,
                        "not_applicable",
                        "This company has no Platform Services, the BlueSnap application is not "
                        "installed, or this user has no rights in it: charges and auto-payment "
                        "rules work from AR Automation only. To charge from inside Intacct, "
                        "install the application (Platform Services > Install Application) and "
                        f"grant the user {required.obj} rights",
                    )
                )
                continue
            have = granted.get((required.module, required.obj), set())
            missing = [r for r in required.rights if r not in have]
            if missing:
                results.append(
                    PermissionResult(
                        required,
                        "missing",
                        where_to_fix(
                            required, missing, multi_entity=row.multi_entity, user_id=row.user_id
                        ),
                    )
                )
            else:
                results.append(PermissionResult(required, "granted"))
        return results, platform, 1

    # Reads ------------------------------------------------------------------------------

    async def entities(self, account_id: str) -> list[Record]:
        client = await self.client(account_id)
        out: list[Record] = []
        async for _data, records in client.stream_query(
            "LOCATIONENTITY", ["RECORDNO", "LOCATIONID", "NAME", "CURRENCY"]
        ):
            out.extend(flatten(r) for r in records)
        return out

    async def stream_records(
        self,
        account_id: str,
        obj: IntacctObject,
        *,
        since: datetime | None,
        before: datetime | None,
        fields: Sequence[str],
    ) -> AsyncIterator[tuple[int | None, list[tuple[list[str], list[list[str]]]]]]:
        """Pages of flattened records as rows (``as_rows``); the first page also
        carries the total."""
        client = await self.client(account_id)
        row = await self.account(account_id)
        wanted = list(dict.fromkeys([*obj.fields, *fields])) if fields else list(obj.fields)
        conditions = []
        if since is not None:
            conditions.append(
                rq.Condition("greaterthanorequalto", obj.modified_field, (client.to_local(since),))
            )
        if before is not None:
            conditions.append(
                rq.Condition("lessthan", obj.modified_field, (client.to_local(before),))
            )
        first = True
        async for data, records in client.stream_query(
            obj.name,
            wanted,
            conditions=conditions,
            docparid=obj.docparid,
            show_private=row.multi_entity and not row.entity_id,
            key_field=obj.key_field,
        ):
            yield (data.totalcount if first else None), as_rows(records)
            first = False

    async def get_records(
        self, account_id: str, obj: IntacctObject, keys: Sequence[str], fields: Sequence[str]
    ) -> list[Record]:
        if len(keys) > 100:
            raise InvalidArgument(f"{len(keys)} keys given; GetRecords takes at most 100 per call")
        client = await self.client(account_id)
        wanted = list(dict.fromkeys([*obj.fields, *fields])) if fields else list(obj.fields)
        response = await client.execute(
            [rq.Function("read", rq.read(obj.name, list(keys), wanted, obj.docparid))]
        )
        result = response.results[0]
        if not result.ok:
            raise RecordFailure(
                "Intacct refused the read: " + "; ".join(e.text() for e in result.errors),
                result.errors,
            )
        return [flatten(r) for r in (result.data.records if result.data else [])]

    async def invoice_pdf(
        self, account_id: str, record_no: str, source: str, modified_at: datetime | None
    ) -> tuple[bytes, bool]:
        """The invoice printed with its template; (pdf, from_cache).

        With the invoice version the caller holds (``modified_at``, Intacct's
        WHENMODIFIED), a PDF fetched for that version is answered without an API
        call. Otherwise one ``retrievepdf`` (a Sales Invoice also needs one query
        for its document id) fetches it and it replaces the cached one.
        """
        if not record_no.isdigit():
            raise InvalidArgument("invoice_record_no must be the invoice's RECORDNO (digits)")
        cached = await self.pool.fetchrow(
            "SELECT pdf, modified_at FROM invoice_pdfs WHERE account_id = $1"
            " AND record_no = $2 AND source = $3",
            account_id,
            record_no,
            source,
        )
        if cached is not None and modified_at is not None and cached["modified_at"] == modified_at:
            return bytes(cached["pdf"]), True
        client = await self.client(account_id)
        kind, key = "arinvoice", record_no
        if source == "sales_invoice":
            found = await client.execute(
                [
                    rq.Function(
                        "docid",
                        rq.query(
                            "SODOCUMENT",
                            ["DOCID"],
                            conditions=[rq.Condition("equalto", "PRRECORDKEY", (record_no,))],
                            page_size=1,
                        ),
                    )
                ]
            )
            rows = found.results[0].data.records if found.results[0].data else []
            if not found.results[0].ok or not rows:
                raise NotFound(
                    f"no Sales Invoice document posts AR invoice {record_no}; "
                    "ask for it with source INVOICE_SOURCE_AR_INVOICE"
                )
            kind, key = "sotransaction", str(flatten(rows[0]).get("DOCID", ""))
        response = await client.execute([rq.Function("pdf", rq.retrieve_pdf(kind, key))])
        result = response.results[0]
        if not result.ok:
            raise RecordFailure(
                "Intacct refused to print the invoice: "
                + "; ".join(e.text() for e in result.errors),
                result.errors,
            )
        records = result.data.records if result.data else []
        encoded = str(flatten(records[0]).get("pdfdata", "")) if records else ""
        try:
            pdf = base64.b64decode(encoded, validate=True)
        except ValueError:
            pdf = b""
        if not pdf.startswith(b"%PDF-"):
            raise RecordFailure("Intacct answered retrievepdf without a PDF", [])
        await self.pool.execute(
            "INSERT INTO invoice_pdfs (account_id, record_no, source, modified_at, pdf)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id, record_no, source) DO UPDATE"
            " SET modified_at = EXCLUDED.modified_at, pdf = EXCLUDED.pdf, fetched_at = now()",
            account_id,
            record_no,
            source,
            modified_at,
            pdf,
        )
        return pdf, False

    def local_to_utc(self, client: IntacctClient, text: str) -> datetime | None:
        return client.from_local(text)

    # Writes -----------------------------------------------------------------------------

    async def write_records(
        self, account_id: str, obj: IntacctObject, writes: Sequence[Write]
    ) -> list[WriteResult]:
        for write in writes:
            if not write.idempotency_key:
                raise InvalidArgument(
                    "every write needs an idempotency_key (it becomes the "
                    "Intacct function controlid)"
                )
            if write.operation in ("update", "delete") and not write.record_no:
                raise InvalidArgument(
                    f"{write.operation} of {write.idempotency_key} needs record_no"
                )
        if not obj.generic_create and any(w.operation == "create" for w in writes):
            raise InvalidArgument(
                f"{obj.name} cannot be created with WriteRecords; use the "
                "dedicated RPC (PostArPayment, UpdateCustomFields)"
            )
        client = await self.client(account_id)
        results: dict[str, WriteResult] = {}
        for operation in ("create", "update", "delete"):
            group = [w for w in writes if w.operation == operation]
            for start in range(0, len(group), 100):
                await self._write_batch(client, obj, operation, group[start : start + 100], results)
        return [results[w.idempotency_key] for w in writes]

    async def _write_batch(
        self,
        client: IntacctClient,
        obj: IntacctObject,
        operation: str,
        batch: list[Write],
        results: dict[str, WriteResult],
    ) -> None:
        function = _write_function(obj, operation, batch)
        outcome = (await client.write([function]))[0]
        if outcome.ok or len(batch) == 1:
            self._record_outcome(obj, batch, outcome, results)
            return
        # The batch was refused: find which records Intacct already created, and
        # send the others one by one so one bad record does not hold back the rest.
        created = _created_ids(obj, outcome)
        for write in batch:
            if write.fields.get(obj.id_field, "") in created and operation == "create":
                results[write.idempotency_key] = WriteResult(
                    write.idempotency_key, True, created[write.fields[obj.id_field]]
                )
                continue
            single = (await client.write([_write_function(obj, operation, [write])]))[0]
            self._record_outcome(obj, [write], single, results)

    def _record_outcome(
        self,
        obj: IntacctObject,
        batch: list[Write],
        outcome: WriteOutcome,
        results: dict[str, WriteResult],
    ) -> None:
        created = _created_ids(obj, outcome)
        records = outcome.result.data.records if outcome.result and outcome.result.data else []
        for index, write in enumerate(batch):
            if outcome.ok:
                record_no = write.record_no
                if write.fields.get(obj.id_field) in created:
                    record_no = created[write.fields[obj.id_field]]
                elif index < len(records):
                    record_no = str(records[index].get(obj.key_field, record_no))
                results[write.idempotency_key] = WriteResult(
                    write.idempotency_key, True, record_no, outcome.already_applied
                )
            else:
                errors = outcome.result.errors if outcome.result else []
                results[write.idempotency_key] = WriteResult(
                    write.idempotency_key, False, write.record_no, errors=errors
                )

    async def post_payment(
        self,
        account_id: str,
        *,
        idempotency_key: str,
        customer_id: str,
        amount: str,
        currency: str,
        received: date | datetime,
        payment_method: str,
        applications: Sequence[rq.Application],
        bank_account_id: str,
        undeposited_funds_account: str,
    ) -> tuple[str, bool]:
        """Posts an applied AR payment once per key. ``received``: its date in the
        company's time zone, or the moment, dated here on the company's calendar."""
        if not idempotency_key:
            raise InvalidArgument("idempotency_key is required: the payment is posted once per key")
        if not applications:
            raise InvalidArgument("applications is required: name the invoices the payment pays")
        if bool(bank_account_id) == bool(undeposited_funds_account):
            raise InvalidArgument(
                "give exactly one of bank_account_id and undeposited_funds_account"
            )
        client = await self.client(account_id)
        if isinstance(received, datetime):
            received = received.astimezone(client.tz).date()
        reference = _reference(idempotency_key)
        function = rq.Function(
            rq.controlid_for(f"arpayment:{idempotency_key}"),
            rq.create_arpayment(
                customer_id=customer_id,
                amount=amount,
                received=received,
                payment_method=payment_method,
                applications=applications,
                bank_account_id=bank_account_id,
                undeposited_funds_account=undeposited_funds_account,
                reference=reference,
                currency=currency,
            ),
            write=True,
        )
        outcome = (await client.write([function]))[0]
        if outcome.already_applied:
            found = await self._payment_by_reference(client, reference)
            return found, True
        assert outcome.result is not None
        if not outcome.result.ok:
            raise RecordFailure(
                "Intacct refused the payment: "
                + "; ".join(e.text() for e in outcome.result.errors),
                outcome.result.errors,
            )
        return outcome.result.key or "", False

    async def _payment_by_reference(self, client: IntacctClient, reference: str) -> str:
        response = await client.execute(
            [
                rq.Function(
                    "find",
                    rq.query(
                        "ARPYMT",
                        ["RECORDNO"],
                        conditions=[rq.Condition("equalto", "DOCNUMBER", (reference,))],
                        page_size=1,
                    ),
                )
            ]
        )
        result = response.results[0]
        records = result.data.records if result.ok and result.data else []
        return str(records[0].get("RECORDNO", "")) if records else ""

    async def update_custom_fields(
        self,
        account_id: str,
        idempotency_key: str,
        updates: Sequence[tuple[str, str, dict[str, str]]],
    ) -> list[WriteResult]:
        """Updates (object, record no, values): customers batched, invoices one per function."""
        if not idempotency_key:
            raise InvalidArgument("idempotency_key is required")
        client = await self.client(account_id)
        functions: list[tuple[str, rq.Function]] = []
        customers = [(rec, values) for name, rec, values in updates if name == "CUSTOMER"]
        for start in range(0, len(customers), 100):
            chunk = customers[start : start + 100]
            key = f"cf:{idempotency_key}:CUSTOMER:{','.join(r for r, _ in chunk)}"
            functions.append(
                (
                    key,
                    rq.Function(
                        rq.controlid_for(_digest(key)),
                        rq.update("CUSTOMER", [{"RECORDNO": r, **v} for r, v in chunk]),
                        write=True,
                    ),
                )
            )
        for name, record_no, values in updates:
            if name == "ARINVOICE":
                key = f"cf:{idempotency_key}:ARINVOICE:{record_no}"
                functions.append(
                    (
                        key,
                        rq.Function(
                            rq.controlid_for(_digest(key)),
                            rq.update_invoice(record_no, custom=values),
                            write=True,
                        ),
                    )
                )
            elif name != "CUSTOMER":
                raise InvalidArgument(
                    f"custom fields can be updated on CUSTOMER and ARINVOICE, not {name}"
                )
        outcomes = await client.write([f for _, f in functions])
        return [
            WriteResult(
                key,
                o.ok,
                already_applied=o.already_applied,
                errors=o.result.errors if o.result and not o.ok else [],
            )
            for (key, _), o in zip(functions, outcomes, strict=True)
        ]

    async def usage(self, account_id: str, start: date, end: date) -> list[tuple[date, str, int]]:
        async with self.pool.acquire() as conn:
            return await repo.usage(conn, account_id, start, end)


def granted_policies(result: Any) -> dict[tuple[str, str], set[str]]:
    """The rights a ``getUserPermissions`` result grants, by (application, policy)."""
    granted: dict[tuple[str, str], set[str]] = {}
    for app in result.data.records if result.data else []:
        for subscription in _as_list(app.get("appSubscription", app)):
            module = str(subscription.get("applicationName", "")).strip()
            policies = subscription.get("policies", {})
            for policy in _as_list(
                policies.get("policy", []) if isinstance(policies, dict) else []
            ):
                rights = set(str(policy.get("rights", "")).split("|"))
                granted[(module, str(policy.get("policyName", "")).strip())] = rights
    return granted


def has_platform(granted: dict[tuple[str, str], set[str]]) -> bool:
    """Whether the BlueSnap application (which needs Platform Services) is there: Intacct
    lists an application's policies only where it is installed. Asking this way fails no
    call, where reading the application's objects would fail in a company without it."""
    return any((r.module, r.obj) in granted for r in REQUIRED if r.platform)


def _as_list(value: object) -> list[dict[str, object]]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return [value] if isinstance(value, dict) else []


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def _reference(idempotency_key: str) -> str:
    return "ARB-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:20].upper()


def _write_function(obj: IntacctObject, operation: str, batch: Sequence[Write]) -> rq.Function:
    key = f"{operation}:{obj.name}:" + ",".join(w.idempotency_key for w in batch)
    controlid = rq.controlid_for(batch[0].idempotency_key if len(batch) == 1 else _digest(key))
    if operation == "create":
        body = rq.create(obj.name, [w.fields for w in batch])
    elif operation == "update":
        body = rq.update(obj.name, [{obj.key_field: w.record_no, **w.fields} for w in batch])
    else:
        body = rq.delete(obj.name, [w.record_no for w in batch])
    return rq.Function(controlid, body, write=True)


def _created_ids(obj: IntacctObject, outcome: WriteOutcome) -> dict[str, str]:
    if not obj.id_field or outcome.result is None or outcome.result.data is None:
        return {}
    return {
        str(r.get(obj.id_field, "")): str(r.get(obj.key_field, ""))
        for r in outcome.result.data.records
        if r.get(obj.id_field)
    }


def default_window(days: int = 30) -> tuple[date, date]:
    today = datetime.now(UTC).date()
    return today - timedelta(days=days), today
