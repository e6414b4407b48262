"""The sandbox's engine: the request envelope, authentication, sessions, faults and counters.

:meth:`Sandbox.handle` takes the bytes of one XML gateway request and returns
the HTTP status, content type and body Intacct would send, so the HTTP layer
stays thin and tests and benchmarks can drive the engine directly.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from lxml import etree

from arbridge_intacct_sandbox.functions import (
    HANDLERS,
    WRITES,
    Call,
    Change,
    Failure,
    Journal,
    Result,
    ResultSet,
)
from arbridge_intacct_sandbox.store import Company, Faults, Session, SessionStore, User
from arbridge_intacct_sandbox.xmlout import Err, element, errors_xml
from arbridge_runtime.xml import XmlRejected, parse_xml

XML_TYPE = "text/xml; charset=UTF-8"
MAX_REQUEST_BYTES = 16 * 1024 * 1024
SESSION_DURATION = timedelta(hours=1)
ABORTED = Err(
    "XL03000009",
    "",
    "The entire transaction in this operation has been rolled back due to an error.",
)


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = XML_TYPE


@dataclass
class CompanyStats:
    requests: int = 0
    functions: Counter[str] = field(default_factory=Counter)
    # Functions Intacct answered with a failure (not throttling or outages), by name.
    failed_functions: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    server_errors: int = 0
    gateway_timeouts: int = 0
    auth_failures: int = 0
    max_concurrency: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "api_calls": sum(self.functions.values()),
            "functions": dict(self.functions),
            "failed_functions": dict(self.failed_functions),
            "throttled": self.throttled,
            "server_errors": self.server_errors,
            "gateway_timeouts": self.gateway_timeouts,
            "auth_failures": self.auth_failures,
            "max_concurrency": self.max_concurrency,
        }


ChangeListener = Callable[[Company, list[Change]], None]


class Sandbox:
    """Every company, sender, session and counter of one sandbox."""

    def __init__(self, *, seed: int = 0) -> None:
        self.companies: dict[str, Company] = {}
        self.senders: dict[str, str] = {}
        self.sessions = SessionStore()
        self.result_sets: dict[str, ResultSet] = {}
        self.last_result_by_object: dict[tuple[str, str], str] = {}
        self.stats: defaultdict[str, CompanyStats] = defaultdict(CompanyStats)
        self._inflight: Counter[str] = Counter()
        self._random = random.Random(seed)
        self.change_listeners: list[ChangeListener] = []

    # Set-up ------------------------------------------------------------------

    def add_sender(self, sender_id: str, password: str) -> None:
        self.senders[sender_id] = password

    def add_company(self, company: Company) -> Company:
        self.companies[company.company_id] = company
        return company

    def remove_company(self, company_id: str) -> None:
        self.companies.pop(company_id, None)
        self.sessions.expire_company(company_id)
        self.stats.pop(company_id, None)

    def reset(self) -> None:
        self.companies.clear()
        self.result_sets.clear()
        self.last_result_by_object.clear()
        self.stats.clear()
        self.sessions = SessionStore()

    def publish_changes(self, company: Company, changes: list[Change]) -> None:
        if changes:
            for listener in self.change_listeners:
                listener(company, changes)

    # The XML gateway -------------------------------------------------------------

    async def handle(self, body: bytes, endpoint: str) -> Reply:
        arrived = time.monotonic()
        try:
            root = parse_xml(body, MAX_REQUEST_BYTES)
        except XmlRejected as exc:
            return self._control_failure(
                None,
                Err(
                    "XL03000003",
                    "XML Parse schema error",
                    str(exc),
                    "Send a well-formed request document",
                ),
            )
        control = root.find("control")
        if root.tag != "request" or control is None:
            return self._control_failure(
                None,
                Err(
                    "XL03000003",
                    "XML Parse schema error",
                    "The root element must be <request> with a <control> block",
                ),
            )
        sender_id = _child(control, "senderid")
        if not sender_id or not _child(control, "controlid"):
            return self._control_failure(
                control,
                Err("XL03000003", "XML Parse schema error", "control needs senderid and controlid"),
            )
        if _child(control, "dtdversion") not in ("", "3.0"):
            return self._control_failure(
                control,
                Err(
                    "XL03000003",
                    "XML Parse schema error",
                    f"dtdversion {_child(control, 'dtdversion')} is not supported; use 3.0",
                ),
            )
        if self.senders.get(sender_id) != _child(control, "password"):
            return self._control_failure(
                control,
                Err(
                    "XL03000006",
                    "",
                    "Incorrect Intacct XML Partner ID or password.",
                    "Check the Web Services sender ID and password",
                ),
            )
        operations = root.findall("operation")
        if not operations:
            return self._control_failure(
                control,
                Err("XL03000003", "XML Parse schema error", "The request has no <operation>"),
            )
        unknown = _unknown_functions(operations)
        if unknown:
            return self._control_failure(
                control,
                Err(
                    "XL03000003",
                    "XML Parse schema error",
                    f"Element '{unknown}': This element is not expected.",
                    "Use a function the XML API supports",
                ),
            )
        company = self._company_of(operations[0])
        faults = company.faults if company else None
        stats = self.stats[company.company_id] if company else None
        if company and faults and stats:
            stats.requests += 1
            throttled = (faults.throttle_rate and self._random.random() < faults.throttle_rate) or (
                faults.concurrency_limit
                and self._inflight[company.company_id] >= faults.concurrency_limit
            )
            if throttled:
                stats.throttled += 1
                return _gateway_error(
                    429, "GW-0010", "Rate limit exceeded. Too many requests; back off and retry"
                )
            if faults.error_5xx_rate and self._random.random() < faults.error_5xx_rate:
                stats.server_errors += 1
                return Reply(
                    503, b"<html><body><h1>503 Service Unavailable</h1></body></html>", "text/html"
                )
        if company:
            self._inflight[company.company_id] += 1
            if stats:
                stats.max_concurrency = max(
                    stats.max_concurrency, self._inflight[company.company_id]
                )
        try:
            reply = self._execute(control, operations, endpoint)
            if faults and faults.latency_ms:
                # The latency is the time Intacct takes to answer, its own work
                # included: the sandbox's work (building a page of 2,000 records
                # takes it tens of ms) is not added on top.
                await asyncio.sleep(max(0.0, arrived + faults.latency_ms / 1000 - time.monotonic()))
        finally:
            if company:
                self._inflight[company.company_id] -= 1
        if faults and stats and _gateway_timeout(faults, self._random):
            # The work was done; the CDN cut the connection: the caller cannot know.
            stats.gateway_timeouts += 1
            return Reply(524, b"<html><body>A timeout occurred (524)</body></html>", "text/html")
        return reply

    def _company_of(self, operation: etree._Element) -> Company | None:
        auth = operation.find("authentication")
        if auth is None:
            return None
        login = auth.find("login")
        if login is not None:
            return self.companies.get(_child(login, "companyid").split("|")[0])
        session_id = _child(auth, "sessionid")
        for company_id in {s.company_id for s in [self.sessions._sessions.get(session_id)] if s}:
            return self.companies.get(company_id)
        return None

    def _execute(
        self, control: etree._Element, operations: list[etree._Element], endpoint: str
    ) -> Reply:
        sender_id = _child(control, "senderid")
        unique = _child(control, "uniqueid").lower() == "true"
        functions_total = sum(len(op.findall("content/function")) for op in operations)
        parts = [_control_xml(control, "success")]
        for operation in operations:
            parts.append("<operation>")
            auth_xml, call, errors = self._authenticate(operation, sender_id)
            parts.append(auth_xml)
            if call is None:
                parts.append(errors_xml(errors))
                parts.append("</operation>")
                continue
            transaction = operation.get("transaction", "false").lower() == "true"
            results = self._run_functions(
                call,
                operation.findall("content/function"),
                unique,
                transaction,
                endpoint,
                functions_total,
            )
            parts.extend(_result_xml(r) for r in results)
            parts.append("</operation>")
            self.publish_changes(call.company, call.journal.changes)
        return Reply(200, _document("".join(parts)))

    def _authenticate(
        self, operation: etree._Element, sender_id: str
    ) -> tuple[str, Call | None, list[Err]]:
        auth = operation.find("authentication")
        login = auth.find("login") if auth is not None else None
        session: Session | None = None
        if login is not None:
            user_id = _child(login, "userid")
            company_id = _child(login, "companyid").split("|")[0]
            company = self.companies.get(company_id)
            entity = _child(login, "locationid")
            user = company.users.get(user_id) if company else None
            failure = _auth_failure_xml(user_id, company_id)
            if company is None or user is None or user.password != _child(login, "password"):
                self._count_auth_failure(company)
                return (
                    failure,
                    None,
                    [
                        Err(
                            "XL03000006",
                            "",
                            "Sign-in information is incorrect",
                            "Check the user ID, company ID and password",
                        )
                    ],
                )
            if sender_id not in company.authorized_senders:
                self._count_auth_failure(company)
                return (
                    failure,
                    None,
                    [
                        Err(
                            "XL03000006",
                            "",
                            f"Web Services sender {sender_id} is not authorized for company "
                            f"{company_id}",
                            "Add the sender ID under Company > Setup > Company > Security > "
                            "Web Services authorizations",
                        )
                    ],
                )
            problem = _entity_problem(company, user, entity)
            if problem:
                self._count_auth_failure(company)
                return failure, None, [Err("XL03000006", "", problem, "Use a valid entity ID")]
            session_key = f"login:{company_id}:{user_id}:{entity}"
            now = datetime.now(UTC)
            timeout = now + SESSION_DURATION
        else:
            session_id = _child(auth, "sessionid") if auth is not None else ""
            session = self.sessions.touch(session_id)
            company = self.companies.get(session.company_id) if session else None
            if (
                session
                and company
                and company.faults.session_expiry_calls
                and (session.calls % company.faults.session_expiry_calls == 0)
            ):
                self.sessions.expire(session.session_id)
                session = None
            if session is None or company is None:
                self._count_auth_failure(company)
                return (
                    _auth_failure_xml("", ""),
                    None,
                    [
                        Err(
                            "XL03000006",
                            "",
                            "Invalid session",
                            "Get a new session with getAPISession",
                        )
                    ],
                )
            user_id, company_id, entity = session.user_id, company.company_id, session.entity
            user = company.users[user_id]
            session_key = session.session_id
            now = datetime.now(UTC)
            timeout = session.expires_at
        local = company.tz
        auth_xml = (
            "<authentication><status>success</status>"
            + element("userid", user_id)
            + element("companyid", company_id)
            + element("locationid", entity)
            + element("sessiontimestamp", now.astimezone(local).isoformat(timespec="seconds"))
            + element("sessiontimeout", timeout.astimezone(local).isoformat(timespec="seconds"))
            + "</authentication>"
        )
        call = Call(
            company=company,
            user=user,
            entity=entity,
            journal=Journal(),
            result_sets=self.result_sets,
            last_result_by_object=self.last_result_by_object,
            session_key=session_key,
        )
        return auth_xml, call, []

    def _count_auth_failure(self, company: Company | None) -> None:
        if company:
            self.stats[company.company_id].auth_failures += 1

    def _run_functions(
        self,
        call: Call,
        functions: list[etree._Element],
        unique: bool,
        transaction: bool,
        endpoint: str,
        functions_total: int,
    ) -> list[Result]:
        results: list[Result] = []
        failed = False
        stats = self.stats[call.company.company_id]
        for function in functions:
            controlid = function.get("controlid", "")
            body = function[0] if len(function) else None
            name = str(body.tag) if body is not None else ""
            if failed and transaction:
                results.append(Result(name, controlid, "aborted", errors=[ABORTED]))
                continue
            stats.functions[name] += 1
            undo_mark, change_mark = len(call.journal.undo), len(call.journal.changes)
            try:
                if not controlid:
                    raise Failure(
                        Err(
                            "XL03000003",
                            "XML Parse schema error",
                            "Every <function> needs a controlid attribute",
                        )
                    )
                if unique and controlid in call.company.executed_controlids:
                    raise Failure(
                        Err(
                            "XL03000012",
                            "Duplicate function control ID",
                            f"The function with control ID '{controlid}' was already executed "
                            "successfully for this company; uniqueid=true refuses to run it again",
                            "Read the record back instead of repeating the write",
                        )
                    )
                if name == "getAPISession":
                    result = self._get_api_session(call, body, endpoint, functions_total)
                else:
                    with call.company.lock:
                        result = HANDLERS[name](call, body)
                result.controlid = controlid
                result.function = name
                if unique:
                    call.company.executed_controlids.add(controlid)
                results.append(result)
            except Failure as failure:
                if not transaction:
                    # A function fails whole: undo its own partial writes only.
                    Journal(call.journal.undo[undo_mark:], []).rollback(call.company)
                    del call.journal.undo[undo_mark:]
                    del call.journal.changes[change_mark:]
                errors = list(failure.errors)
                if transaction:
                    errors.append(ABORTED)
                results.append(Result(name, controlid, "failure", failure.data, errors))
                stats.failed_functions[name] += 1
                failed = True
        if failed and transaction:
            call.journal.rollback(call.company)
            for result in results:
                if result.status == "success":
                    result.status = "aborted"
                    result.body = ""
                    result.errors = [ABORTED]
                    if unique:
                        call.company.executed_controlids.discard(result.controlid)
        return results

    def _get_api_session(
        self, call: Call, body: etree._Element, endpoint: str, functions_total: int
    ) -> Result:
        if functions_total != 1:
            raise Failure(
                Err(
                    "Get API Session Failed",
                    "",
                    "getAPISession must be the only function in its request",
                    "Send getAPISession in a request of its own",
                )
            )
        entity = call.entity
        location = body.find("locationid")
        if location is not None:
            entity = (location.text or "").strip()
        problem = _entity_problem(call.company, call.user, entity)
        if problem:
            raise Failure(Err("Get API Session Failed", "", problem, "Use a valid entity ID"))
        session = self.sessions.create(call.company, call.user.user_id, entity, SESSION_DURATION)
        body_xml = (
            "<data><api>"
            + element("sessionid", session.session_id)
            + element("endpoint", endpoint)
            + element("locationid", entity)
            + "</api></data>"
        )
        return Result("getAPISession", "", body=body_xml)

    def _control_failure(self, control: etree._Element | None, error: Err) -> Reply:
        return Reply(200, _document(_control_xml(control, "failure") + errors_xml([error])))


def _gateway_timeout(faults: Faults, rng: random.Random) -> bool:
    if faults.error_524_next > 0:
        faults.error_524_next -= 1
        return True
    return bool(faults.error_524_rate) and rng.random() < faults.error_524_rate


def _child(el: etree._Element | None, tag: str) -> str:
    if el is None:
        return ""
    child = el.find(tag)
    return (child.text or "").strip() if child is not None and child.text else ""


def _entity_problem(company: Company, user: User, entity: str) -> str:
    if user.entity is not None and entity != user.entity:
        return f"User {user.user_id} can only sign in to entity {user.entity}"
    if entity and entity not in company.entity_ids():
        return f"Invalid entity {entity} for company {company.company_id}"
    return ""


def _unknown_functions(operations: list[etree._Element]) -> str:
    known = set(HANDLERS) | {"getAPISession"}
    for operation in operations:
        for function in operation.findall("content/function"):
            if len(function) != 1:
                return "function"
            if function[0].tag not in known:
                return str(function[0].tag)
    return ""


def _control_xml(control: etree._Element | None, status: str) -> str:
    return (
        "<control>"
        + element("status", status)
        + element("senderid", _child(control, "senderid"))
        + element("controlid", _child(control, "controlid"))
        + element("uniqueid", _child(control, "uniqueid") or "false")
        + element("dtdversion", _child(control, "dtdversion") or "3.0")
        + "</control>"
    )


def _auth_failure_xml(user_id: str, company_id: str) -> str:
    return (
        "<authentication><status>failure</status>"
        + element("userid", user_id)
        + element("companyid", company_id)
        + "</authentication>"
    )


def _result_xml(result: Result) -> str:
    parts = [
        "<result>",
        element("status", result.status),
        element("function", result.function),
        element("controlid", result.controlid),
        result.body,
    ]
    if result.errors:
        parts.append(errors_xml(result.errors))
    parts.append("</result>")
    return "".join(parts)


def _document(inner: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<response>{inner}</response>'.encode()


def _gateway_error(status: int, errorno: str, description: str) -> Reply:
    body = (
        "<response><control><status>failure</status></control>"
        + errors_xml([Err(errorno, description)])
        + "</response>"
    )
    return Reply(status, ('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode())


__all__ = ["WRITES", "Reply", "Sandbox"]
