"""The functions of the XML API, each run against one company.

Every function returns a :class:`Result`; a business failure raises
:class:`Failure` with Intacct-shaped errors. Writes go through a
:class:`Journal` so that ``transaction="true"`` can roll them back and smart
events fire only for what was committed.
"""

from __future__ import annotations

import base64
import bisect
import copy
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from lxml import etree

from arbridge_intacct_sandbox import pdf
from arbridge_intacct_sandbox.query import (
    QueryError,
    comparisons,
    compile_filter,
    compile_read_by_query,
    holding,
    sort_values,
    typed,
)
from arbridge_intacct_sandbox.schema import (
    ARINVOICE,
    ARINVOICEITEM,
    ARPYMT,
    ARPYMTDETAIL,
    CUSTOMER,
    DATE,
    DATETIME,
    OBJECTS,
    PERMISSIONS,
    SODOCUMENT,
    FieldDef,
    ObjectDef,
    resolve_object,
)
from arbridge_intacct_sandbox.store import Company, Row, Table, User, fmt_date, fmt_money
from arbridge_intacct_sandbox.xmlout import Err, attr, element, esc, flat_record, nested_record

READ_BY_QUERY_MAX = 1000
QUERY_MAX = 2000
DEFAULT_PAGE = 100
RESULT_SET_TTL = 30 * 60.0


class Failure(Exception):
    def __init__(self, *errors: Err, data: str = "") -> None:
        super().__init__(errors[0].description2 or errors[0].errorno)
        self.errors = list(errors)
        self.data = data


@dataclass
class Result:
    function: str
    controlid: str
    status: str = "success"
    body: str = ""
    errors: list[Err] = field(default_factory=list)


@dataclass
class ResultSet:
    result_id: str
    company_id: str
    obj: ObjectDef
    rows: list[Row]
    names: list[str]
    pagesize: int
    position: int
    expires_at: float


@dataclass
class Change:
    obj: ObjectDef
    action: str  # add | set | delete
    row: Row


@dataclass
class Journal:
    """Writes of one operation, for rollback and for smart events after commit."""

    undo: list[tuple[ObjectDef, int, Row | None]] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)

    def rollback(self, company: Company) -> None:
        with company.lock:
            for obj, recordno, previous in reversed(self.undo):
                if previous is None:
                    company.delete(obj, recordno)
                else:
                    company.put(
                        obj,
                        dict(previous.values),
                        entity=previous.entity,
                        recordno=recordno,
                        keep_modified=True,
                    )
        self.undo.clear()
        self.changes.clear()


@dataclass
class Call:
    """What one function needs: the company, who calls, and the operation's journal."""

    company: Company
    user: User
    entity: str
    journal: Journal
    result_sets: dict[str, ResultSet]
    last_result_by_object: dict[tuple[str, str], str]
    session_key: str

    def now(self) -> datetime:
        return datetime.now(UTC)


RIGHT_OF = {
    "readByQuery": "List",
    "readMore": "List",
    "query": "List",
    "inspect": "List",
    "read": "View",
    "readByName": "View",
    "create": "Add",
    "create_invoice": "Add",
    "create_arpayment": "Add",
    "update": "Edit",
    "update_invoice": "Edit",
    "apply_arpayment": "Edit",
    "delete": "Delete",
    "delete_invoice": "Edit",
    "delete_customer": "Edit",
    "delete_araccountlabel": "Add",
    "create_supdoc": "Edit",
}
_OPERATION_NAME = {
    "List": "READ_BY_QUERY",
    "View": "READ",
    "Add": "CREATE",
    "Edit": "UPDATE",
    "Delete": "DELETE",
}


def _object_or_fail(call: Call, name: str, errorno: str = "BL01001973") -> ObjectDef:
    obj = resolve_object(name.strip())
    if obj is None or (obj.custom_object and not call.company.platform_services):
        raise Failure(
            Err(
                errorno,
                "",
                f"Object definition {name.strip()} not found",
                "Check the object name; custom objects need Platform Services",
            )
        )
    return obj


def _require(call: Call, obj: ObjectDef, right: str) -> None:
    if obj.permission is None:
        return
    granted = call.user.grants.get(obj.permission, frozenset())
    if right not in granted:
        perm = PERMISSIONS[obj.permission]
        raise Failure(
            Err(
                "BL01001973",
                "",
                f"You do not have permission for API operation {_OPERATION_NAME.get(right, right)} "
                f"on objects of type {obj.list_name}",
                f"Grant the web services user {right} on {perm.module} > {perm.obj} ({perm.fix})",
            )
        )


def _visible(call: Call, row: Row, show_private: bool) -> bool:
    if call.entity:
        return row.entity in ("", call.entity)
    return row.entity == "" or show_private or not call.company.multi_entity


def _text(el: etree._Element, tag: str, default: str = "") -> str:
    child = el.find(tag)
    if child is None:
        for candidate in el:
            if str(candidate.tag).lower() == tag.lower():
                child = candidate
                break
    if child is None or child.text is None:
        return default
    return str(child.text).strip()


def _int(value: str, what: str, minimum: int, maximum: int, default: int) -> int:
    if value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise Failure(
            Err(
                "BL01001973",
                "",
                f"Invalid {what} '{value}'",
                f"Use a whole number from {minimum} to {maximum}",
            )
        ) from None
    if not minimum <= number <= maximum:
        raise Failure(
            Err(
                "BL01001973",
                "",
                f"Invalid {what} {number}",
                f"Use a whole number from {minimum} to {maximum}",
            )
        )
    return number


def _field_names(call: Call, obj: ObjectDef, fields_text: str) -> list[str]:
    known = call.company.fields_of(obj)
    if fields_text in ("", "*"):
        return list(known)
    names = []
    for raw in fields_text.split(","):
        name = raw.strip()
        match = next((k for k in (name, name.upper(), name.lower()) if k in known), None)
        if match is None:
            raise Failure(
                Err(
                    "Invalid fields list " + fields_text,
                    "",
                    f"The field {name} is not a field of {obj.name}",
                    "Use inspect to list the object's fields",
                )
            )
        names.append(match)
    return names


def _docpar_filter(obj: ObjectDef, docparid: str) -> Callable[[Row], bool]:
    if obj.name != "SODOCUMENT" or not docparid:
        return lambda _row: True
    return lambda row: row.values.get("DOCPARID") == docparid


# Reads ------------------------------------------------------------------------


def read_by_query(call: Call, el: etree._Element) -> Result:
    obj = _object_or_fail(call, _text(el, "object"), "Query Failed")
    _require(call, obj, "List")
    pagesize = _int(_text(el, "pagesize"), "pagesize", 1, READ_BY_QUERY_MAX, DEFAULT_PAGE)
    names = _field_names(call, obj, _text(el, "fields", "*"))
    fields = call.company.fields_of(obj)
    try:
        predicate = compile_read_by_query(_text(el, "query"), fields)
    except QueryError as exc:
        raise Failure(Err("Query Failed", "", str(exc), "Correct the query")) from None
    docpar = _docpar_filter(obj, _text(el, "docparid"))
    rows = sorted(
        (
            r
            for r in call.company.rows(obj)
            if _visible(call, r, False) and docpar(r) and predicate(r.values)
        ),
        key=lambda r: r.recordno,
    )
    result_set = ResultSet(
        secrets.token_urlsafe(18),
        call.company.company_id,
        obj,
        rows,
        names,
        pagesize,
        0,
        time.monotonic() + RESULT_SET_TTL,
    )
    call.result_sets[result_set.result_id] = result_set
    call.last_result_by_object[(call.session_key, obj.name)] = result_set.result_id
    return Result("readByQuery", "", body=_page(result_set))


def _page(result_set: ResultSet) -> str:
    start = result_set.position
    chunk = result_set.rows[start : start + result_set.pagesize]
    result_set.position = start + len(chunk)
    remaining = len(result_set.rows) - result_set.position
    tag = result_set.obj.list_name
    records = "".join(nested_record(tag, r.values, result_set.names) for r in chunk)
    result_id = result_set.result_id if remaining > 0 else ""
    head = (
        f'<data listtype="{tag}" count="{len(chunk)}" totalcount="{len(result_set.rows)}" '
        f'numremaining="{remaining}" resultId="{attr(result_id)}"'
    )
    return f"{head}>{records}</data>" if records else f"{head}/>"


def read_more(call: Call, el: etree._Element) -> Result:
    result_id = _text(el, "resultId")
    if not result_id and _text(el, "object"):
        obj = _object_or_fail(call, _text(el, "object"))
        result_id = call.last_result_by_object.get((call.session_key, obj.name), "")
    result_set = call.result_sets.get(result_id)
    if (
        result_set is None
        or result_set.company_id != call.company.company_id
        or result_set.expires_at < time.monotonic()
        or result_set.position >= len(result_set.rows)
    ):
        raise Failure(
            Err(
                "readMore failed",
                "",
                f"Attempt to readMore with an invalid or expired resultId: {result_id}",
            )
        )
    result_set.expires_at = time.monotonic() + RESULT_SET_TTL
    return Result("readMore", "", body=_page(result_set))


def _read_keys(call: Call, el: etree._Element, by_name: bool) -> Result:
    function = "readByName" if by_name else "read"
    obj = _object_or_fail(call, _text(el, "object"))
    _require(call, obj, "View")
    keys = [k.strip() for k in _text(el, "keys").split(",") if k.strip()]
    if len(keys) > 100:
        raise Failure(
            Err(
                "BL01001973",
                "",
                f"{len(keys)} keys requested; at most 100 are allowed",
                "Split the keys into calls of 100",
            )
        )
    names = _field_names(call, obj, _text(el, "fields", "*"))
    docpar = _docpar_filter(obj, _text(el, "docparid"))
    rows = []
    if not keys:
        rows = [r for r in call.company.rows(obj) if _visible(call, r, False) and docpar(r)][:100]
    for key in keys:
        row = None
        if by_name:
            if obj.id_field:
                table = call.company.tables[obj.name]
                recordno = table.by_id.get(key)
                row = table.rows.get(recordno) if recordno is not None else None
        elif key.isdigit():
            row = call.company.tables[obj.name].rows.get(int(key))
        if row is not None and _visible(call, row, False) and docpar(row):
            _check_failing(
                call, obj, [str(row.recordno), row.values.get(obj.id_field or "", "")], "read"
            )
            rows.append(row)
    records = "".join(nested_record(obj.name, r.values, names) for r in rows)
    head = f'<data listtype="{obj.name}" count="{len(rows)}"'
    return Result(function, "", body=f"{head}>{records}</data>" if records else f"{head}/>")


def read(call: Call, el: etree._Element) -> Result:
    return _read_keys(call, el, by_name=False)


def read_by_name(call: Call, el: etree._Element) -> Result:
    return _read_keys(call, el, by_name=True)


def query(call: Call, el: etree._Element) -> Result:
    obj = _object_or_fail(call, _text(el, "object"), "Query Failed")
    _require(call, obj, "List")
    fields = call.company.fields_of(obj)
    select = el.find("select")
    if select is None or len(select) == 0:
        raise Failure(
            Err(
                "Query Failed",
                "",
                "select is required: name the fields to return",
                "Returning all fields is not supported; list them in <select>",
            )
        )
    names: list[str] = []
    count_of: str | None = None
    for item in select:
        tag = str(item.tag).lower()
        if tag == "field":
            name = (item.text or "").strip()
            match = next((k for k in (name, name.upper(), name.lower()) if k in fields), None)
            if match is None:
                raise Failure(
                    Err(
                        "Query Failed",
                        "",
                        f"Invalid field: {name}",
                        "Use inspect to list the object's fields",
                    )
                )
            names.append(match)
        elif tag == "count":
            count_of = (item.text or "").strip() or _text(item, "field") or "RECORDNO"
        else:
            raise Failure(Err("Query Failed", "", f"Unsupported select item <{item.tag}>"))
    options = el.find("options")
    case_insensitive = options is not None and _text(options, "caseinsensitive") == "true"
    show_private = options is not None and _text(options, "showprivate") == "true"
    pagesize = _int(_text(el, "pagesize"), "pagesize", 1, QUERY_MAX, DEFAULT_PAGE)
    offset = _int(_text(el, "offset"), "offset", 0, 10**9, 0)
    order = []
    orderby = el.find("orderby")
    if orderby is not None:
        for item in orderby.findall("order"):
            order.append((_text(item, "field"), item.find("descending") is None))
    key_field = "id" if obj.custom_object else "RECORDNO"
    filter_el, after = el.find("filter"), None
    if not order or order == [(key_field, True)]:
        filter_el, after = _split_keyset(filter_el, key_field)
    try:
        predicate = compile_filter(filter_el, fields, case_insensitive)
    except QueryError as exc:
        raise Failure(Err("Query Failed", "", str(exc), "Correct the filter")) from None
    rows, keys = _selection(
        call, obj, el, filter_el, show_private, order, lambda r: predicate(r.values), fields
    )
    if after is not None:
        # A keyset walk (RECORDNO > n): the selection without that condition is
        # cached once; each page is a binary search and a slice.
        rows = rows[bisect.bisect_right(keys, after) :]
    if count_of is not None:
        body = (
            f'<data listtype="{obj.name}" totalcount="1" offset="0" count="1" numremaining="0">'
            f"<{obj.name}><COUNT.{count_of}>{len(rows)}</COUNT.{count_of}></{obj.name}></data>"
        )
        return Result("query", "", body=body)
    chunk = rows[offset : offset + pagesize]
    remaining = max(0, len(rows) - offset - len(chunk))
    records = "".join(flat_record(obj.name, r.values, names) for r in chunk)
    head = (
        f'<data listtype="{obj.name}" totalcount="{len(rows)}" offset="{offset}" '
        f'count="{len(chunk)}" numremaining="{remaining}"'
    )
    return Result("query", "", body=f"{head}>{records}</data>" if records else f"{head}/>")


def _split_keyset(
    filter_el: etree._Element | None, key_field: str
) -> tuple[etree._Element | None, int | None]:
    """The filter without a top-level ``key > n`` condition, and n (None when absent)."""
    if filter_el is None or len(filter_el) != 1:
        return filter_el, None

    def bound(node: etree._Element) -> int | None:
        value = (node.findtext("value") or "").strip()
        if (
            node.tag == "greaterthan"
            and (node.findtext("field") or "").strip() == key_field
            and len(node.findall("value")) == 1
            and value.isdigit()
        ):
            return int(value)
        return None

    top = filter_el[0]
    if (found := bound(top)) is not None:
        return None, found
    if top.tag != "and":
        return filter_el, None
    bounds = [(child, bound(child)) for child in top]
    keyed = [(child, value) for child, value in bounds if value is not None]
    if len(keyed) != 1:
        return filter_el, None
    rest = [copy.deepcopy(child) for child in top if child is not keyed[0][0]]
    stripped = etree.Element("filter")
    if len(rest) == 1:
        stripped.append(rest[0])
    else:
        joined = etree.SubElement(stripped, "and")
        for child in rest:
            joined.append(child)
    return stripped, keyed[0][1]


def _selection(
    call: Call,
    obj: ObjectDef,
    el: etree._Element,
    filter_el: etree._Element | None,
    show_private: bool,
    order: list[tuple[str, bool]],
    keep: Callable[[Row], bool],
    fields: Mapping[str, FieldDef],
) -> tuple[list[Row], list[int]]:
    """The rows a query selects, in order; cached until the object's table changes.

    An offset walk asks the same query once per page: the cache turns each
    page after the first into a slice instead of a scan and sort of the table.
    """
    table = call.company.tables[obj.name]
    signature = "".join(
        etree.tostring(part).decode()
        for part in (filter_el, el.find("orderby"), el.find("options"), el.find("docparid"))
        if part is not None
    )
    key = (obj.name, signature, call.entity, show_private, table.version)
    cache = call.company.query_cache
    cached = cache.get(key)
    if cached is not None:
        return cached
    docpar = _docpar_filter(obj, _text(el, "docparid"))
    compared = comparisons(filter_el, fields)
    candidates: Iterable[Row]
    if compared:
        # Comparisons of numbers and dates (an initial sync's WHENMODIFIED window):
        # over the table's typed columns, without a call per record.
        listed = _rows(table)
        positions: Iterable[int] = range(len(listed))
        for field, test, right in compared:
            positions = holding(positions, _column(call.company, table, field), test, right)
        candidates, keep = [listed[i] for i in positions], _always
    else:
        candidates = table.rows.values()
    rows = [r for r in candidates if _visible(call, r, show_private) and docpar(r) and keep(r)]
    rows.sort(key=lambda r: r.recordno)
    if order and order != [("RECORDNO", True)]:
        try:
            rows = sort_values(rows, lambda r: r.values, fields, order)
        except QueryError as exc:
            raise Failure(Err("Query Failed", "", str(exc))) from None
    if len(cache) >= 32:
        cache.pop(next(iter(cache)))
    cache[key] = (rows, [r.recordno for r in rows])
    return cache[key]


def _always(_row: Row) -> bool:
    return True


def _rows(table: Table) -> list[Row]:
    """The table's rows as a list, kept until the table changes."""
    cached = table.listed
    if cached is None or cached[0] != table.version:
        cached = table.listed = (table.version, list(table.rows.values()))
    return cached[1]


def _column(company: Company, table: Table, field: FieldDef) -> list[Any]:
    """One field's typed value of every row (as :func:`_rows` lists them), kept until
    the table changes: the sandbox's index, as a real Intacct has its columns typed."""
    key = (table.obj.name, field.name)
    cached = company.columns.get(key)
    if cached is None or cached[0] != table.version:
        name = field.name
        cached = (table.version, [typed(field, r.values.get(name, "")) for r in _rows(table)])
        company.columns[key] = cached
    return cached[1]


def warm(company: Company) -> None:
    """Builds the date and timestamp columns of the company's tables ahead of the
    first query (a 100,000-invoice table's takes a few hundred ms)."""
    for table in company.tables.values():
        for spec in table.obj.fields:
            if spec.type in (DATE, DATETIME):
                _column(company, table, spec)


def inspect(call: Call, el: etree._Element) -> Result:
    name = _text(el, "object")
    detail = el.get("detail", "0") == "1"
    if not name or name == "*":
        everything = list(_all_objects(call))
        listing = "".join(f'<type typename="{o.name}">{esc(o.singular)}</type>' for o in everything)
        return Result(
            "inspect", "", body=f'<data listtype="All" count="{len(everything)}">{listing}</data>'
        )
    obj = _object_or_fail(call, name)
    _require(call, obj, "List")
    fields = call.company.fields_of(obj)
    if detail:
        parts = []
        for f in fields.values():
            data_name, external = f.data_names
            parts.append(
                "<Field>"
                + element("Name", f.name)
                + "<GroupName></GroupName>"
                + element("dataName", data_name)
                + element("externalDataName", external)
                + element("isRequired", str(f.required).lower())
                + element("isReadOnly", str(f.read_only).lower())
                + element("maxLength", str(f.max_length))
                + element("DisplayLabel", f.label)
                + element("Description", f.label)
                + element("isCustom", str(f.custom).lower())
                + "</Field>"
            )
        body = (
            f'<data listtype="All" count="1"><Type Name="{obj.name}"><Attributes>'
            f"{element('SingularName', obj.singular)}{element('PluralName', obj.plural)}"
            f"<Description></Description></Attributes><Fields>{''.join(parts)}</Fields>"
            f"</Type></data>"
        )
    else:
        body = (
            f'<data listtype="All" count="1"><Type Name="{obj.name}"><Fields>'
            + "".join(element("Field", n) for n in fields)
            + "</Fields></Type></data>"
        )
    return Result("inspect", "", body=body)


def _all_objects(call: Call) -> Iterable[ObjectDef]:
    return [o for o in OBJECTS.values() if not o.custom_object or call.company.platform_services]


# Writes -----------------------------------------------------------------------


def _flatten(el: etree._Element, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for child in el:
        name = f"{prefix}{child.tag}"
        if len(child):
            out.update(_flatten(child, f"{name}."))
        else:
            out[str(name)] = (child.text or "").strip()
    return out


def _check_failing(call: Call, obj: ObjectDef, keys: Iterable[str], action: str) -> None:
    for key in keys:
        if key and (obj.name, key) in call.company.faults.failing_records:
            raise Failure(
                Err(
                    "BL01001973",
                    "",
                    f"Could not {action} {obj.singular} record! "
                    f"Validation failed for {key}: the sandbox was asked to refuse this record",
                    "Fix the record in Intacct and re-sync it",
                )
            )


def _write(
    call: Call, obj: ObjectDef, values: dict[str, str], *, entity: str, recordno: int | None = None
) -> Row:
    company = call.company
    table = company.tables[obj.name]
    previous = table.rows.get(recordno) if recordno is not None else None
    row = company.put(obj, values, entity=entity, recordno=recordno, now=call.now())
    call.journal.undo.append((obj, row.recordno, previous))
    call.journal.changes.append(Change(obj, "set" if previous else "add", row))
    return row


def _remove(call: Call, obj: ObjectDef, recordno: int) -> None:
    row = call.company.delete(obj, recordno)
    if row is not None:
        call.journal.undo.append((obj, recordno, row))
        call.journal.changes.append(Change(obj, "delete", row))


def _validate_values(call: Call, obj: ObjectDef, values: Mapping[str, str]) -> None:
    known = call.company.fields_of(obj)
    for name in values:
        if name not in known:
            raise Failure(
                Err(
                    "BL01001973",
                    "",
                    f"Invalid field {name} for {obj.name}",
                    "Use inspect to list the object's fields",
                ),
                Err("BL01001973", "", f"Could not create {obj.singular} record!"),
            )
    for name, value in values.items():
        field = known[name]
        if field.read_only and name not in ("RECORDNO", "id"):
            raise Failure(Err("BL01001973", "", f"Field {name} of {obj.name} is read-only"))
        if value and field.type in ("decimal", "integer"):
            try:
                Decimal(value)
            except InvalidOperation:
                raise Failure(
                    Err(
                        "BL01001973",
                        "",
                        f"{value} is not a valid number for {name}",
                        "Enter a number",
                    )
                ) from None


def _entity_for_write(call: Call, values: dict[str, str]) -> str:
    return call.entity


def create(call: Call, el: etree._Element) -> Result:
    records = list(el)
    if not records:
        raise Failure(Err("BL01001973", "", "create needs at least one record"))
    if len(records) > 100:
        raise Failure(
            Err(
                "BL01001973",
                "",
                f"{len(records)} records in one create; at most 100",
                "Split the records into functions of 100",
            )
        )
    created: list[tuple[ObjectDef, Row]] = []
    for record in records:
        obj = _object_or_fail(call, str(record.tag))
        _require(call, obj, "Add")
        if not obj.generic_create:
            raise Failure(
                Err("BL01001973", "", f"create is not supported for {obj.name}", _legacy_hint(obj)),
                data='<data listtype="objects" count="0"/>',
            )
        values = _flatten(record)
        details = {k: v for k, v in values.items() if k.startswith("ARPYMTDETAILS.")}
        for key in details:
            values.pop(key)
        _validate_values(call, obj, values)
        for required in (f for f in call.company.fields_of(obj).values() if f.required):
            if not values.get(required.name):
                raise Failure(
                    Err(
                        "BL01001973", "", f"{required.name} is required", f"Provide {required.name}"
                    ),
                    Err("BL01001973", "", f"Could not create {obj.singular} record!"),
                    data='<data listtype="objects" count="0"/>',
                )
        if (
            obj.id_field
            and values.get(obj.id_field)
            and call.company.find(obj, values[obj.id_field])
        ):
            raise Failure(
                Err(
                    "BL34000061",
                    "",
                    f"Another {obj.singular} with the given value(s) "
                    f"{values[obj.id_field]}  already exists",
                    "Use a unique value instead.",
                ),
                Err("BL01001973", "", f"Could not create {obj.singular} record!"),
                data='<data listtype="objects" count="0"/>',
            )
        _check_failing(call, obj, [values.get(obj.id_field or "", "")], "create")
        if obj is CUSTOMER:
            values.setdefault("STATUS", "active")
            values.setdefault("TOTALDUE", "0.00")
            values.setdefault("CURRENCY", call.company.base_currency)
        if obj is ARPYMT:
            row = _create_payment(call, values, _payment_details(record))
        else:
            row = _write(call, obj, values, entity=_entity_for_write(call, values))
        created.append((obj, row))
    body = "".join(
        f"<{o.list_name}>{element('id' if o.custom_object else 'RECORDNO', str(r.recordno))}"
        + (element(o.id_field, r.values.get(o.id_field, "")) if o.id_field else "")
        + f"</{o.list_name}>"
        for o, r in created
    )
    return Result(
        "create", "", body=f'<data listtype="objects" count="{len(created)}">{body}</data>'
    )


def _legacy_hint(obj: ObjectDef) -> str:
    if obj is ARINVOICE:
        return "Use create_invoice / update_invoice for AR invoices"
    return "Use the object's legacy function"


def update(call: Call, el: etree._Element) -> Result:
    records = list(el)
    if len(records) > 100:
        raise Failure(Err("BL01001973", "", f"{len(records)} records in one update; at most 100"))
    updated: list[tuple[ObjectDef, Row]] = []
    for record in records:
        obj = _object_or_fail(call, str(record.tag))
        _require(call, obj, "Edit")
        if not obj.generic_update:
            raise Failure(
                Err("BL01001973", "", f"update is not supported for {obj.name}", _legacy_hint(obj))
            )
        values = _flatten(record)
        key_field = "id" if obj.custom_object else "RECORDNO"
        key = values.pop(key_field, "")
        id_value = values.get(obj.id_field, "") if obj.id_field else ""
        row = (
            call.company.find(obj, key)
            if key
            else (call.company.find(obj, id_value) if id_value else None)
        )
        if row is None or not _visible(call, row, False):
            shown = f"{key_field}={key}" if key else f"{obj.id_field}={id_value}"
            raise Failure(
                Err(f"Cannot update non-existing {obj.name} with {shown}.", "", ""),
                data='<data listtype="objects" count="0"/>',
            )
        _validate_values(call, obj, values)
        _check_failing(
            call, obj, [row.values.get(obj.id_field or "", ""), str(row.recordno)], "update"
        )
        new_row = _write(call, obj, values, entity=row.entity, recordno=row.recordno)
        updated.append((obj, new_row))
    body = "".join(
        f"<{o.list_name}>{element('id' if o.custom_object else 'RECORDNO', str(r.recordno))}"
        + (element(o.id_field, r.values.get(o.id_field, "")) if o.id_field else "")
        + f"</{o.list_name}>"
        for o, r in updated
    )
    return Result(
        "update", "", body=f'<data listtype="objects" count="{len(updated)}">{body}</data>'
    )


def delete(call: Call, el: etree._Element) -> Result:
    obj = _object_or_fail(call, _text(el, "object"))
    _require(call, obj, "Delete" if obj.permission != "ar.invoices" else "Edit")
    if not obj.generic_delete:
        raise Failure(Err("BL01001973", "", f"delete is not supported for {obj.name}"))
    keys = [k.strip() for k in _text(el, "keys").split(",") if k.strip()]
    if not keys:
        raise Failure(Err("BL01001973", "", "keys is required"))
    for key in keys:
        row = call.company.find(obj, key) if key.isdigit() else None
        if row is None or not _visible(call, row, False):
            raise Failure(
                Err("BL01001973", "", f"Cannot find {obj.list_name} with key '{key}' to delete.")
            )
        _check_failing(call, obj, [key], "delete")
        if obj is ARINVOICE:
            _delete_invoice_rows(call, row)
        else:
            _remove(call, obj, row.recordno)
    return Result("delete", "")


# Legacy AR functions ------------------------------------------------------------


def _date_of(el: etree._Element | None) -> date | None:
    if el is None:
        return None
    try:
        return date(int(_text(el, "year")), int(_text(el, "month")), int(_text(el, "day")))
    except ValueError:
        raise Failure(Err("BL01001973", "", "Invalid date: give year, month and day")) from None


def _money(value: str, what: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise Failure(
            Err(
                "BL01001973",
                "",
                f"{what} '{value}' is not a valid amount",
                "Enter an amount such as 125.00",
            )
        ) from None
    return amount


def _customer(call: Call, customer_id: str) -> Row:
    row = call.company.find(CUSTOMER, customer_id) if customer_id else None
    if row is None or row.values.get("CUSTOMERID") != customer_id or not _visible(call, row, False):
        raise Failure(
            Err(
                "BL01001973",
                "",
                f"Invalid Customer {customer_id} specified.",
                "Enter a valid customer ID",
            )
        )
    return row


def _custom_values(call: Call, obj: ObjectDef, el: etree._Element) -> dict[str, str]:
    out: dict[str, str] = {}
    known = {f.name.upper(): f.name for f in call.company.custom_fields.get(obj.name, ())}
    holder = el.find("customfields")
    if holder is None:
        return out
    for item in holder.findall("customfield"):
        name = _text(item, "customfieldname")
        real = known.get(name.upper())
        if real is None:
            raise Failure(
                Err(
                    "BL01001973",
                    "",
                    f"Invalid custom field {name} for {obj.name}",
                    "Create the custom field in Intacct or correct its name",
                )
            )
        out[real] = _text(item, "customfieldvalue")
    return out


def _invoice_state(total: Decimal, paid: Decimal) -> str:
    if paid <= 0:
        return "Posted"
    return "Paid" if paid >= total else "Partially Paid"


def create_invoice(call: Call, el: etree._Element) -> Result:
    _require(call, ARINVOICE, "Add")
    customer = _customer(call, _text(el, "customerid"))
    created = _date_of(el.find("datecreated")) or call.now().astimezone(call.company.tz).date()
    due = _date_of(el.find("datedue"))
    if due is None and not _text(el, "termname"):
        raise Failure(
            Err(
                "BL01001973",
                "",
                "Either a due date or a term is required",
                "Provide datedue or termname",
            )
        )
    lines = el.findall("invoiceitems/lineitem")
    if not lines:
        raise Failure(Err("BL01001973", "", "An invoice needs at least one line item"))
    invoice_no = _text(el, "invoiceno")
    _check_failing(call, ARINVOICE, [invoice_no, customer.values["CUSTOMERID"]], "create")
    total = sum((_money(_text(line, "amount"), "amount") for line in lines), Decimal(0))
    currency = (
        _text(el, "currency") or customer.values.get("CURRENCY") or call.company.base_currency
    )
    values = {
        "RECORDTYPE": "ri",
        "RECORDID": invoice_no,
        "DOCNUMBER": _text(el, "ponumber"),
        "CUSTOMERID": customer.values["CUSTOMERID"],
        "CUSTOMERNAME": customer.values.get("NAME", ""),
        "TERMNAME": _text(el, "termname"),
        "DESCRIPTION": _text(el, "description"),
        "WHENCREATED": fmt_date(created),
        "WHENPOSTED": fmt_date(created),
        "WHENDUE": fmt_date(due or created),
        "WHENPAID": "",
        "CURRENCY": currency,
        "BASECURR": _text(el, "basecurr") or call.company.base_currency,
        "STATE": "Draft" if _text(el, "action") == "Draft" else "Posted",
        "RAWSTATE": "A",
        "TOTALENTERED": fmt_money(total),
        "TOTALPAID": "0.00",
        "TOTALDUE": fmt_money(total),
        "TRX_TOTALENTERED": fmt_money(total),
        "TRX_TOTALPAID": "0.00",
        "TRX_TOTALDUE": fmt_money(total),
        "MODULEKEY": "4.AR",
        "SUPDOCID": _text(el, "supdocid"),
    }
    values.update(_custom_values(call, ARINVOICE, el))
    row = _write(call, ARINVOICE, values, entity=customer.entity or call.entity)
    for number, line in enumerate(lines, start=1):
        amount = fmt_money(_money(_text(line, "amount"), "amount"))
        _write(
            call,
            ARINVOICEITEM,
            {
                "RECORDKEY": str(row.recordno),
                "LINE_NO": str(number),
                "ACCOUNTNO": _text(line, "glaccountno") or _text(line, "accountlabel"),
                "AMOUNT": amount,
                "TRX_AMOUNT": amount,
                "ENTRYDESCRIPTION": _text(line, "memo"),
                "LOCATIONID": _text(line, "locationid"),
                "CURRENCY": currency,
            },
            entity=row.entity,
        )
    _refresh_customer_due(call, customer.values["CUSTOMERID"])
    return Result("create_invoice", "", body=element("key", str(row.recordno)))


def _invoice_row(call: Call, key: str) -> Row:
    row = call.company.find(ARINVOICE, key) if key.isdigit() else None
    if row is None or not _visible(call, row, False):
        raise Failure(
            Err("BL01001973", "", f"Invalid invoice key {key}", "Use the invoice's RECORDNO")
        )
    return row


def update_invoice(call: Call, el: etree._Element) -> Result:
    _require(call, ARINVOICE, "Edit")
    row = _invoice_row(call, el.get("key", ""))
    _check_failing(call, ARINVOICE, [row.values.get("RECORDID", ""), str(row.recordno)], "update")
    values: dict[str, str] = {}
    due = _date_of(el.find("datedue"))
    if due:
        values["WHENDUE"] = fmt_date(due)
    for tag, name in (
        ("termname", "TERMNAME"),
        ("description", "DESCRIPTION"),
        ("ponumber", "DOCNUMBER"),
        ("invoiceno", "RECORDID"),
    ):
        if el.find(tag) is not None:
            values[name] = _text(el, tag)
    values.update(_custom_values(call, ARINVOICE, el))
    new_row = _write(call, ARINVOICE, values, entity=row.entity, recordno=row.recordno)
    return Result("update_invoice", "", body=element("key", str(new_row.recordno)))


def _delete_invoice_rows(call: Call, row: Row) -> None:
    for item in [
        r
        for r in call.company.rows(ARINVOICEITEM)
        if r.values.get("RECORDKEY") == str(row.recordno)
    ]:
        _remove(call, ARINVOICEITEM, item.recordno)
    _remove(call, ARINVOICE, row.recordno)
    _refresh_customer_due(call, row.values.get("CUSTOMERID", ""))


def delete_invoice(call: Call, el: etree._Element) -> Result:
    _require(call, ARINVOICE, "Edit")
    row = _invoice_row(call, el.get("key", ""))
    if Decimal(row.values.get("TOTALPAID", "0") or "0") > 0:
        raise Failure(
            Err(
                "BL01001973",
                "",
                "Cannot delete an invoice with payments applied",
                "Reverse the payments first",
            )
        )
    _delete_invoice_rows(call, row)
    return Result("delete_invoice", "")


def _payment_details(record: etree._Element) -> list[tuple[str, Decimal]]:
    out = []
    for detail in record.findall("ARPYMTDETAILS/ARPYMTDETAIL"):
        out.append(
            (
                _text(detail, "RECORDKEY"),
                _money(_text(detail, "TRX_PAYMENTAMOUNT"), "TRX_PAYMENTAMOUNT"),
            )
        )
    return out


def _apply(call: Call, payment: Row, applications: list[tuple[str, Decimal]]) -> Decimal:
    applied_total = Decimal(0)
    for invoice_key, amount in applications:
        if amount <= 0:
            raise Failure(Err("BL01001973", "", f"Payment amount {amount} must be positive"))
        invoice = _invoice_row(call, invoice_key)
        if invoice.values.get("CUSTOMERID") != payment.values.get("CUSTOMERID"):
            raise Failure(
                Err("BL01001973", "", f"Invoice {invoice_key} belongs to another customer")
            )
        due = Decimal(invoice.values.get("TRX_TOTALDUE") or "0")
        if amount > due:
            raise Failure(
                Err(
                    "BL01001973",
                    "",
                    f"Payment of {fmt_money(amount)} is more than the {fmt_money(due)} "
                    f"due on invoice {invoice_key}",
                    "Apply at most the amount due",
                )
            )
        total = Decimal(invoice.values.get("TRX_TOTALENTERED") or "0")
        paid = Decimal(invoice.values.get("TRX_TOTALPAID") or "0") + amount
        state = _invoice_state(total, paid)
        _write(
            call,
            ARINVOICE,
            {
                "TOTALPAID": fmt_money(paid),
                "TRX_TOTALPAID": fmt_money(paid),
                "TOTALDUE": fmt_money(total - paid),
                "TRX_TOTALDUE": fmt_money(total - paid),
                "STATE": state,
                "WHENPAID": payment.values.get("RECEIPTDATE", "") if state == "Paid" else "",
            },
            entity=invoice.entity,
            recordno=invoice.recordno,
        )
        _write(
            call,
            ARPYMTDETAIL,
            {
                "PAYMENTKEY": str(payment.recordno),
                "RECORDKEY": invoice_key,
                "TRX_PAYMENTAMOUNT": fmt_money(amount),
                "PAYMENTAMOUNT": fmt_money(amount),
                "CURRENCY": payment.values.get("CURRENCY", ""),
            },
            entity=payment.entity,
        )
        applied_total += amount
    return applied_total


def _create_payment(
    call: Call, values: dict[str, str], applications: list[tuple[str, Decimal]]
) -> Row:
    customer = _customer(call, values.get("CUSTOMERID", ""))
    if not values.get("FINANCIALENTITY") and not values.get("UNDEPOSITEDACCOUNTNO"):
        raise Failure(
            Err(
                "BL01001973",
                "",
                "A bank account or an undeposited funds account is required",
                "Set FINANCIALENTITY (bankaccountid) or UNDEPOSITEDACCOUNTNO (undepfundsacct)",
            )
        )
    bank = values.get("FINANCIALENTITY", "")
    if bank and not (
        call.company.find(_bank_object("CHECKINGACCOUNT"), bank)
        or call.company.find(_bank_object("SAVINGSACCOUNT"), bank)
    ):
        raise Failure(
            Err(
                "BL01001973",
                "",
                f"Invalid bank account {bank}",
                "Use a checking or savings account ID",
            )
        )
    total = sum((amount for _, amount in applications), Decimal(0))
    if values.get("TRX_TOTALENTERED"):
        total = _money(values["TRX_TOTALENTERED"], "payment amount")
    values = {
        **values,
        "RECORDTYPE": "rp",
        "CUSTOMERNAME": customer.values.get("NAME", ""),
        "STATE": "Posted",
        "TOTALENTERED": fmt_money(total),
        "TRX_TOTALENTERED": fmt_money(total),
        "TOTALPAID": "0.00",
        "TRX_TOTALPAID": "0.00",
        "CURRENCY": values.get("CURRENCY") or customer.values.get("CURRENCY", "USD"),
        "RECEIPTDATE": values.get("RECEIPTDATE")
        or fmt_date(call.now().astimezone(call.company.tz).date()),
    }
    _check_failing(
        call, ARPYMT, [values.get("DOCNUMBER", ""), customer.values["CUSTOMERID"]], "create"
    )
    payment = _write(call, ARPYMT, values, entity=customer.entity or call.entity)
    applied = _apply(call, payment, applications)
    if applied:
        payment = _write(
            call,
            ARPYMT,
            {"TOTALPAID": fmt_money(applied), "TRX_TOTALPAID": fmt_money(applied)},
            entity=payment.entity,
            recordno=payment.recordno,
        )
    _refresh_customer_due(call, customer.values["CUSTOMERID"])
    return payment


def _bank_object(name: str) -> ObjectDef:
    obj = resolve_object(name)
    assert obj is not None
    return obj


def create_arpayment(call: Call, el: etree._Element) -> Result:
    _require(call, ARPYMT, "Add")
    applications = [
        (_text(item, "invoicekey"), _money(_text(item, "amount"), "amount"))
        for item in el.findall("arpaymentitem")
    ]
    received = _date_of(el.find("datereceived"))
    values = {
        "CUSTOMERID": _text(el, "customerid"),
        "FINANCIALENTITY": _text(el, "bankaccountid"),
        "UNDEPOSITEDACCOUNTNO": _text(el, "undepfundsacct"),
        "PAYMENTMETHOD": _text(el, "paymentmethod") or "Credit Card",
        "DOCNUMBER": _text(el, "refid"),
        "TRX_TOTALENTERED": _text(el, "paymentamount"),
        "CURRENCY": _text(el, "currency"),
    }
    if received:
        values["RECEIPTDATE"] = fmt_date(received)
        values["PAYMENTDATE"] = fmt_date(received)
    payment = _create_payment(call, {k: v for k, v in values.items() if v}, applications)
    return Result("create_arpayment", "", body=element("key", str(payment.recordno)))


def apply_arpayment(call: Call, el: etree._Element) -> Result:
    _require(call, ARPYMT, "Edit")
    key = _text(el, "arpaymentkey")
    payment = call.company.find(ARPYMT, key) if key.isdigit() else None
    if payment is None:
        raise Failure(Err("BL01001973", "", f"Invalid payment key {key}"))
    applications = [
        (_text(item, "invoicekey"), _money(_text(item, "amount"), "amount"))
        for item in el.findall("arpaymentitems/arpaymentitem")
    ]
    entered = Decimal(payment.values.get("TRX_TOTALENTERED") or "0")
    already = Decimal(payment.values.get("TRX_TOTALPAID") or "0")
    wanted = sum((a for _, a in applications), Decimal(0))
    if already + wanted > entered:
        raise Failure(
            Err(
                "BL01001973",
                "",
                f"Only {fmt_money(entered - already)} of the payment is left to apply",
                "Apply at most the unapplied amount",
            )
        )
    applied = _apply(call, payment, applications)
    _write(
        call,
        ARPYMT,
        {"TOTALPAID": fmt_money(already + applied), "TRX_TOTALPAID": fmt_money(already + applied)},
        entity=payment.entity,
        recordno=payment.recordno,
    )
    _refresh_customer_due(call, payment.values.get("CUSTOMERID", ""))
    return Result("apply_arpayment", "")


def _refresh_customer_due(call: Call, customer_id: str) -> None:
    customer = call.company.find(CUSTOMER, customer_id) if customer_id else None
    if customer is None:
        return
    due = sum(
        (
            Decimal(r.values.get("TRX_TOTALDUE") or "0")
            for r in call.company.rows(ARINVOICE)
            if r.values.get("CUSTOMERID") == customer_id
        ),
        Decimal(0),
    )
    if customer.values.get("TOTALDUE") != fmt_money(due):
        _write(
            call,
            CUSTOMER,
            {"TOTALDUE": fmt_money(due)},
            entity=customer.entity,
            recordno=customer.recordno,
        )


def delete_customer(call: Call, el: etree._Element) -> Result:
    _require(call, CUSTOMER, "Edit")
    row = call.company.find(CUSTOMER, el.get("customerid", ""))
    if row is None:
        raise Failure(
            Err("BL01001973", "", f"Invalid Customer {el.get('customerid', '')} specified.")
        )
    _remove(call, CUSTOMER, row.recordno)
    return Result("delete_customer", "")


def delete_araccountlabel(call: Call, el: etree._Element) -> Result:
    obj = _bank_object("ARACCOUNTLABEL")
    _require(call, obj, "Add")
    row = call.company.find(obj, el.get("accountlabel", ""))
    if row is None:
        raise Failure(Err("BL01001973", "", f"Invalid account label {el.get('accountlabel', '')}"))
    _remove(call, obj, row.recordno)
    return Result("delete_araccountlabel", "")


def create_supdoc(call: Call, el: etree._Element) -> Result:
    perm = call.user.grants.get("company.attachments", frozenset())
    if "Edit" not in perm:
        raise Failure(
            Err(
                "BL01001973",
                "",
                "You do not have permission for API operation CREATE on objects of type supdoc",
                f"Grant the web services user {PERMISSIONS['company.attachments'].fix}",
            )
        )
    if not _text(el, "supdocfoldername"):
        raise Failure(Err("BL01001973", "", "supdocfoldername is required"))
    supdoc_id = _text(el, "supdocid") or f"SD{secrets.randbelow(10**8):08d}"
    return Result("create_supdoc", "", body=element("key", supdoc_id))


def get_user_permissions(call: Call, el: etree._Element) -> Result:
    """The user's permissions by application (module) and policy (object), as Intacct lists them."""
    user_id = _text(el, "userId")
    user = call.company.users.get(user_id)
    if user is None:
        raise Failure(
            Err(
                "BL03000025",
                "",
                f"Login ID {user_id} does not exist.",
                "Provide a valid USER.LOGINID value.",
            )
        )
    modules: dict[str, list[str]] = {}
    for key, permission in PERMISSIONS.items():
        if permission.platform and not call.company.platform_services:
            continue  # the application is not installed: Intacct does not list it
        granted = [r for r in permission.rights if r in user.grants.get(key, frozenset())]
        if granted:
            modules.setdefault(permission.module, []).append(
                "<policy>"
                + element("policyName", permission.obj)
                + element("rights", "|".join(granted))
                + "</policy>"
            )
    body = "".join(
        "<appSubscription>"
        + element("applicationName", module)
        + "<policies>"
        + "".join(policies)
        + "</policies></appSubscription>"
        for module, policies in modules.items()
    )
    return Result("getUserPermissions", "", body=f"<data><permissions>{body}</permissions></data>")


def retrieve_pdf(call: Call, el: etree._Element) -> Result:
    """``retrievepdf``: the invoice printed with the company's template, base64 in ``pdfdata``.

    ``<arinvoice><key>RECORDNO</key></arinvoice>`` prints with the AR invoice
    template, ``<sotransaction><key>DOCID</key></sotransaction>`` with the Sales
    Invoice template of Order Entry.
    """
    target = next((c for c in el if isinstance(c.tag, str)), None)
    if target is None or target.tag not in ("arinvoice", "sotransaction"):
        raise Failure(
            Err("BL01001973", "", "retrievepdf needs <arinvoice> or <sotransaction> with a <key>")
        )
    key = _text(target, "key")
    if target.tag == "arinvoice":
        _require(call, ARINVOICE, "View")
        row = call.company.find(ARINVOICE, key) if key.isdigit() else None
        template = "AR Invoice"
        number_field, customer_field = "RECORDID", "CUSTOMERID"
    else:
        _require(call, SODOCUMENT, "View")
        row = call.company.find(SODOCUMENT, key)
        template = "Sales Invoice"
        number_field, customer_field = "DOCNO", "CUSTVENDID"
    if row is None:
        raise Failure(
            Err("BL01001973", "", f"No {template} with key {key} exists", "Check the key")
        )
    values = row.values
    invoice_no = row.recordno if target.tag == "arinvoice" else row.values.get("PRRECORDKEY", "")
    items = [
        (
            i.values.get("ENTRYDESCRIPTION") or i.values.get("ACCOUNTNO") or "Item",
            i.values.get("TRX_AMOUNT", ""),
        )
        for i in call.company.tables[ARINVOICEITEM.name].rows.values()
        if i.values.get("RECORDKEY") == str(invoice_no)
    ]
    currency = values.get("CURRENCY", "")
    ar = call.company.find(ARINVOICE, str(invoice_no)) if str(invoice_no).isdigit() else None
    source = ar.values if ar is not None else values
    data = pdf.invoice_pdf(
        company=call.company.name,
        template=template,
        number=values.get(number_field, "") or str(row.recordno),
        customer=f"{values.get(customer_field, '')} {source.get('CUSTOMERNAME', '')}".strip(),
        dates=[
            ("Invoice date", source.get("WHENCREATED", "")),
            ("Due date", source.get("WHENDUE", "")),
        ],
        items=items or [("Invoice total", source.get("TRX_TOTALENTERED", ""))],
        totals=[
            ("Total", f"{source.get('TRX_TOTALENTERED', '')} {currency}"),
            ("Paid", f"{source.get('TRX_TOTALPAID', '')} {currency}"),
            ("Amount due", f"{source.get('TRX_TOTALDUE', '')} {currency}"),
        ],
    )
    body = element("key", key) + element("pdfdata", base64.b64encode(data).decode())
    return Result("retrievepdf", "", body=f"<data><pdf>{body}</pdf></data>")


HANDLERS: dict[str, Callable[[Call, etree._Element], Result]] = {
    "readByQuery": read_by_query,
    "readMore": read_more,
    "read": read,
    "readByName": read_by_name,
    "query": query,
    "inspect": inspect,
    "create": create,
    "update": update,
    "delete": delete,
    "create_invoice": create_invoice,
    "update_invoice": update_invoice,
    "delete_invoice": delete_invoice,
    "create_arpayment": create_arpayment,
    "apply_arpayment": apply_arpayment,
    "delete_customer": delete_customer,
    "delete_araccountlabel": delete_araccountlabel,
    "create_supdoc": create_supdoc,
    "getUserPermissions": get_user_permissions,
    "retrievepdf": retrieve_pdf,
}

WRITES = frozenset(
    {
        "create",
        "update",
        "delete",
        "create_invoice",
        "update_invoice",
        "delete_invoice",
        "create_arpayment",
        "apply_arpayment",
        "delete_customer",
        "delete_araccountlabel",
        "create_supdoc",
    }
)


def field_def(company: Company, obj: ObjectDef, name: str) -> FieldDef | None:
    return company.fields_of(obj).get(name)
