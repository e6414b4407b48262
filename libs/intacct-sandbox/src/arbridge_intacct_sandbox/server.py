"""The sandbox over HTTP: the XML gateway endpoint and the JSON admin API under /sandbox/.

``POST /ia/xml/xmlgw.phtml`` is the XML gateway. The admin API creates
companies, edits records as a person in the Intacct UI would (firing smart
events), configures faults, permissions and smart events, and reads the API
call counters (``GET /sandbox/stats``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from aiohttp import web

from arbridge_intacct_sandbox.events import SmartEventDispatcher
from arbridge_intacct_sandbox.functions import HANDLERS, Call, Change, Failure, Journal
from arbridge_intacct_sandbox.generator import GeneratorSpec, make_company
from arbridge_intacct_sandbox.sandbox import MAX_REQUEST_BYTES, Sandbox
from arbridge_intacct_sandbox.schema import ALL_GRANTS, PERMISSIONS, resolve_object
from arbridge_intacct_sandbox.store import Company, SmartEvent, User
from arbridge_runtime.xml import XmlRejected, parse_xml

SANDBOX = web.AppKey("sandbox", Sandbox)
DISPATCHER = web.AppKey("dispatcher", SmartEventDispatcher)
ResetHook = Callable[[], None]
DEFAULT_FACTORY: web.AppKey[ResetHook] = web.AppKey("default_factory")
GATEWAY_PATH = "/ia/xml/xmlgw.phtml"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "the body must be a JSON object"}),
            content_type="application/json",
        ) from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "the body must be a JSON object"}),
            content_type="application/json",
        )
    return data


def _company(request: web.Request) -> Company:
    company = request.app[SANDBOX].companies.get(request.match_info["company_id"])
    if company is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": "no such company"}), content_type="application/json"
        )
    return company


async def gateway(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    endpoint = f"{request.scheme}://{request.host}{GATEWAY_PATH}"
    reply = await request.app[SANDBOX].handle(body, endpoint)
    return web.Response(
        status=reply.status,
        body=reply.body,
        content_type=None,
        headers={"Content-Type": reply.content_type},
    )


async def gateway_get(_request: web.Request) -> web.Response:
    return web.Response(
        status=405, text="HTTP GET requests are not supported; POST XML", headers={"Allow": "POST"}
    )


# Companies -------------------------------------------------------------------------


async def list_companies(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    return web.json_response({"companies": [_company_json(c) for c in sandbox.companies.values()]})


def _company_json(company: Company) -> dict[str, Any]:
    return {
        "company_id": company.company_id,
        "name": company.name,
        "time_zone": company.time_zone,
        "multi_entity": company.multi_entity,
        "platform_services": company.platform_services,
        "entities": sorted(company.entity_ids()),
        "users": sorted(company.users),
        "authorized_senders": sorted(company.authorized_senders),
        "counts": {name: len(t.rows) for name, t in company.tables.items()},
        "faults": company.faults.to_json(),
    }


async def create_company(request: web.Request) -> web.Response:
    data = await _json(request)
    sandbox = request.app[SANDBOX]
    company_id = str(data.get("company_id", "")).strip()
    if not company_id:
        return _error(400, "company_id is required")
    if company_id in sandbox.companies:
        return _error(409, f"company {company_id} exists; DELETE it first")
    sender_id = str(data.get("sender_id", "")) or next(iter(sandbox.senders), "")
    if data.get("sender_password"):
        sandbox.add_sender(sender_id, str(data["sender_password"]))
    try:
        spec = GeneratorSpec(
            seed=int(data.get("seed", 1)),
            customers=int(data.get("customers", 20)),
            invoices=int(data.get("invoices", 50)),
            entities=tuple(str(e) for e in data.get("entities", [])),
        )
    except (TypeError, ValueError):
        return _error(400, "seed, customers and invoices must be integers")
    company = make_company(
        company_id=company_id,
        user_id=str(data.get("user_id", "xmlgw-armatic")),
        user_password=str(data.get("user_password", "")) or secrets.token_urlsafe(12),
        sender_id=sender_id,
        spec=spec,
        time_zone=str(data.get("time_zone", "America/Los_Angeles")),
        platform_services=bool(data.get("platform_services", True)),
    )
    sandbox.add_company(company)
    return web.json_response(_company_json(company), status=201)


async def delete_company(request: web.Request) -> web.Response:
    company = _company(request)
    request.app[SANDBOX].remove_company(company.company_id)
    return web.json_response({"deleted": company.company_id})


async def add_sender(request: web.Request) -> web.Response:
    data = await _json(request)
    if not data.get("sender_id") or not data.get("password"):
        return _error(400, "sender_id and password are required")
    request.app[SANDBOX].add_sender(str(data["sender_id"]), str(data["password"]))
    return web.json_response({"sender_id": data["sender_id"]}, status=201)


async def authorize_sender(request: web.Request) -> web.Response:
    company = _company(request)
    data = await _json(request)
    sender_id = str(data.get("sender_id", ""))
    if data.get("authorized", True):
        company.authorized_senders.add(sender_id)
    else:
        company.authorized_senders.discard(sender_id)
    return web.json_response({"authorized_senders": sorted(company.authorized_senders)})


async def put_user(request: web.Request) -> web.Response:
    company = _company(request)
    data = await _json(request)
    user_id = request.match_info["user_id"]
    user = company.users.get(user_id)
    if user is None:
        if not data.get("password"):
            return _error(400, "password is required for a new user")
        user = User(user_id=user_id, password=str(data["password"]))
        company.users[user_id] = user
    if data.get("password"):
        user.password = str(data["password"])
    if "entity" in data:
        user.entity = str(data["entity"]) if data["entity"] else None
    if "permissions" in data:
        permissions = data["permissions"]
        if not isinstance(permissions, dict):
            return _error(400, "permissions maps a permission key to a list of rights")
        for key, rights in permissions.items():
            if key not in PERMISSIONS:
                return _error(400, f"unknown permission {key}; known: {', '.join(PERMISSIONS)}")
            user.grants[key] = frozenset(str(r) for r in rights or [])
    if data.get("all_permissions"):
        user.grants = dict(ALL_GRANTS)
    return web.json_response(
        {
            "user_id": user.user_id,
            "entity": user.entity,
            "permissions": {k: sorted(v) for k, v in user.grants.items()},
        }
    )


# Records (as a person in the Intacct UI) --------------------------------------------


def _ui_call(request: web.Request, company: Company) -> Call:
    user = User(user_id="Admin", password="", grants=dict(ALL_GRANTS))
    sandbox = request.app[SANDBOX]
    return Call(
        company=company,
        user=user,
        entity=request.query.get("entity", ""),
        journal=Journal(),
        result_sets=sandbox.result_sets,
        last_result_by_object=sandbox.last_result_by_object,
        session_key="ui",
    )


async def list_records(request: web.Request) -> web.Response:
    company = _company(request)
    obj = resolve_object(request.match_info["object"])
    if obj is None:
        return _error(404, f"unknown object {request.match_info['object']}")
    rows = sorted(company.tables[obj.name].rows.values(), key=lambda r: r.recordno)
    if request.query.get("count_only"):
        return web.json_response({"object": obj.name, "count": len(rows)})
    return web.json_response(
        {
            "object": obj.name,
            "count": len(rows),
            "records": [
                {"recordno": r.recordno, "entity": r.entity, "values": dict(r.values)} for r in rows
            ],
        }
    )


async def write_record(request: web.Request) -> web.Response:
    """Creates (POST) or edits (PUT) a record directly, as the UI would; fires smart events."""
    company = _company(request)
    obj = resolve_object(request.match_info["object"])
    if obj is None:
        return _error(404, f"unknown object {request.match_info['object']}")
    data = await _json(request)
    values = data.get("values")
    if not isinstance(values, dict):
        return _error(400, "values (an object of field names to text) is required")
    known = company.fields_of(obj)
    unknown = [k for k in values if k not in known]
    if unknown:
        return _error(400, f"unknown fields for {obj.name}: {', '.join(unknown)}")
    recordno = request.match_info.get("recordno")
    with company.lock:
        if recordno is not None:
            current = company.tables[obj.name].rows.get(int(recordno))
            if current is None:
                return _error(404, f"no {obj.name} {recordno}")
            row = company.put(
                obj,
                {k: str(v) for k, v in values.items()},
                entity=current.entity,
                recordno=current.recordno,
            )
            action = "set"
        else:
            row = company.put(
                obj, {k: str(v) for k, v in values.items()}, entity=str(data.get("entity", ""))
            )
            action = "add"
    request.app[SANDBOX].publish_changes(company, [Change(obj, action, row)])
    return web.json_response(
        {"recordno": row.recordno, "values": dict(row.values)},
        status=201 if action == "add" else 200,
    )


async def delete_record(request: web.Request) -> web.Response:
    company = _company(request)
    obj = resolve_object(request.match_info["object"])
    if obj is None:
        return _error(404, f"unknown object {request.match_info['object']}")
    row = company.delete(obj, int(request.match_info["recordno"]))
    if row is None:
        return _error(404, "no such record")
    request.app[SANDBOX].publish_changes(company, [Change(obj, "delete", row)])
    return web.json_response({"deleted": row.recordno})


async def ui_function(request: web.Request) -> web.Response:
    """Runs one API function (XML, e.g. <create_invoice>) as the company's admin in the UI."""
    company = _company(request)
    body = await request.read()
    try:
        element = parse_xml(body, MAX_REQUEST_BYTES)
    except XmlRejected as exc:
        return _error(400, str(exc))
    handler = HANDLERS.get(str(element.tag))
    if handler is None:
        return _error(400, f"unknown function {element.tag}")
    call = _ui_call(request, company)
    try:
        with company.lock:
            result = handler(call, element)
    except Failure as failure:
        call.journal.rollback(company)
        return web.json_response(
            {
                "status": "failure",
                "errors": [
                    {
                        "errorno": e.errorno,
                        "description2": e.description2,
                        "correction": e.correction,
                    }
                    for e in failure.errors
                ],
            },
            status=422,
        )
    request.app[SANDBOX].publish_changes(company, call.journal.changes)
    return web.json_response({"status": "success", "body": result.body})


# Faults, smart events, stats --------------------------------------------------------


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(_company(request).faults.to_json())


async def put_faults(request: web.Request) -> web.Response:
    company = _company(request)
    data = await _json(request)
    faults = company.faults
    try:
        for name, cast in (
            ("latency_ms", int),
            ("concurrency_limit", int),
            ("session_expiry_calls", int),
            ("error_524_next", int),
            ("error_5xx_rate", float),
            ("error_524_rate", float),
            ("throttle_rate", float),
        ):
            if name in data:
                setattr(faults, name, cast(data[name]))
        if "drop_smart_events" in data:
            faults.drop_smart_events = bool(data["drop_smart_events"])
        if "failing_records" in data:
            faults.failing_records = {tuple(str(x).split(":", 1)) for x in data["failing_records"]}  # type: ignore[misc]
        if "smart_event_retry_delays" in data:
            faults.smart_event_retry_delays = tuple(
                float(x) for x in data["smart_event_retry_delays"]
            )
    except (TypeError, ValueError) as exc:
        return _error(400, f"invalid fault value: {exc}")
    return web.json_response(faults.to_json())


async def list_smart_events(request: web.Request) -> web.Response:
    company = _company(request)
    return web.json_response(
        {"smart_events": [_event_json(e) for e in company.smart_events.values()]}
    )


def _event_json(event: SmartEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "object": event.object,
        "actions": list(event.actions),
        "url": event.url,
        "body_template": event.body_template,
        "content_type": event.content_type,
        "active": event.active,
    }


async def create_smart_event(request: web.Request) -> web.Response:
    company = _company(request)
    data = await _json(request)
    obj = resolve_object(str(data.get("object", "")))
    if obj is None:
        return _error(400, "object must be an object the sandbox serves (e.g. ARINVOICE)")
    actions = tuple(str(a).lower() for a in data.get("actions", ["add", "set", "delete"]))
    if not actions or any(a not in ("add", "set", "delete") for a in actions):
        return _error(400, "actions is a list of add, set and delete")
    if not str(data.get("url", "")).startswith(("http://", "https://")):
        return _error(400, "url must be an http(s) URL")
    event = SmartEvent(
        event_id=str(data.get("event_id") or secrets.token_hex(6)),
        object=obj.name,
        actions=actions,
        url=str(data["url"]),
        body_template=str(data.get("body_template", "")),
        content_type=str(data.get("content_type", "application/xml")),
        headers={str(k): str(v) for k, v in dict(data.get("headers", {})).items()},
    )
    company.smart_events[event.event_id] = event
    return web.json_response(_event_json(event), status=201)


async def delete_smart_event(request: web.Request) -> web.Response:
    company = _company(request)
    if company.smart_events.pop(request.match_info["event_id"], None) is None:
        return _error(404, "no such smart event")
    return web.json_response({"deleted": request.match_info["event_id"]})


async def smart_event_log(request: web.Request) -> web.Response:
    company = _company(request)
    entries = request.app[DISPATCHER].logs.get(company.company_id, [])
    return web.json_response(
        {"entries": entries[-int(request.query.get("limit", "1000")) :], "total": len(entries)}
    )


async def stats(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    wanted = request.query.get("company")
    return web.json_response(
        {
            "companies": {
                cid: s.to_json() for cid, s in sandbox.stats.items() if not wanted or cid == wanted
            }
        }
    )


async def reset_stats(request: web.Request) -> web.Response:
    request.app[SANDBOX].stats.clear()
    return web.json_response({"reset": "stats"})


async def reset(request: web.Request) -> web.Response:
    request.app[SANDBOX].reset()
    request.app[DISPATCHER].logs.clear()
    request.app[DEFAULT_FACTORY]()
    return web.json_response({"reset": "all"})


def build_app(
    sandbox: Sandbox, default_factory: Callable[[], None] | None = None
) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    dispatcher = SmartEventDispatcher()
    sandbox.change_listeners.append(dispatcher.on_changes)
    app[SANDBOX] = sandbox
    app[DISPATCHER] = dispatcher
    app[DEFAULT_FACTORY] = default_factory or (lambda: None)

    async def dispatcher_ctx(_app: web.Application) -> Any:
        await dispatcher.start()
        yield
        await dispatcher.stop()

    app.cleanup_ctx.append(dispatcher_ctx)
    routes = app.router
    routes.add_post(GATEWAY_PATH, gateway)
    routes.add_get(GATEWAY_PATH, gateway_get)
    routes.add_get("/sandbox/companies", list_companies)
    routes.add_post("/sandbox/companies", create_company)
    routes.add_delete("/sandbox/companies/{company_id}", delete_company)
    routes.add_post("/sandbox/senders", add_sender)
    routes.add_post("/sandbox/companies/{company_id}/senders", authorize_sender)
    routes.add_put("/sandbox/companies/{company_id}/users/{user_id}", put_user)
    routes.add_get("/sandbox/companies/{company_id}/records/{object}", list_records)
    routes.add_post("/sandbox/companies/{company_id}/records/{object}", write_record)
    routes.add_put("/sandbox/companies/{company_id}/records/{object}/{recordno:\\d+}", write_record)
    routes.add_delete(
        "/sandbox/companies/{company_id}/records/{object}/{recordno:\\d+}", delete_record
    )
    routes.add_post("/sandbox/companies/{company_id}/ui", ui_function)
    routes.add_get("/sandbox/companies/{company_id}/faults", get_faults)
    routes.add_put("/sandbox/companies/{company_id}/faults", put_faults)
    routes.add_get("/sandbox/companies/{company_id}/smart-events", list_smart_events)
    routes.add_post("/sandbox/companies/{company_id}/smart-events", create_smart_event)
    routes.add_delete("/sandbox/companies/{company_id}/smart-events/{event_id}", delete_smart_event)
    routes.add_get("/sandbox/companies/{company_id}/smart-event-log", smart_event_log)
    routes.add_get("/sandbox/stats", stats)
    routes.add_post("/sandbox/stats/reset", reset_stats)
    routes.add_post("/sandbox/reset", reset)
    return app
