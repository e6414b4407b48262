"""Intacct response documents: a typed model, a full parser and a streaming reader.

Both parsers use the runtime's hardened settings (no DTD, no entities, no
network, no huge trees, size bounded) and check the structure the way
Intacct's own SDKs do: a response without a control status, an operation
without authentication, a result without status, function or controlid is
refused with :class:`ResponseStructureError`.

:class:`StreamingResponseReader` takes the body in chunks as it arrives and
hands out each record as soon as its element closes, then frees it, so memory
is bounded per record, not per page.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from lxml import etree

from arbridge_intacct.errors import ErrorDetail
from arbridge_runtime.xml import XmlRejected, check_bytes, parse_xml

_speedups: ModuleType | None
try:  # the compiled extractor (libs/intacct-speedups); the pure Python path without it
    import arbridge_intacct_speedups as _compiled

    _speedups = _compiled
except ImportError:  # pragma: no cover - exercised where the extension is not built
    _speedups = None

MAX_RESPONSE_BYTES = 256 * 1024 * 1024
_DECLARATION = re.compile(rb"<!DOCTYPE|<!ENTITY", re.IGNORECASE)

Record = dict[str, Any]


class ResponseStructureError(ValueError):
    """A well-formed document that is not a valid Intacct response."""


@dataclass
class Data:
    listtype: str = ""
    count: int | None = None
    totalcount: int | None = None
    numremaining: int | None = None
    resultid: str | None = None
    offset: int | None = None
    records: list[Record] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "listtype": self.listtype,
            "count": self.count,
            "totalcount": self.totalcount,
            "numremaining": self.numremaining,
            "resultid": self.resultid,
            "records": self.records,
        }


@dataclass
class Result:
    function: str
    controlid: str
    status: str
    errors: list[ErrorDetail] = field(default_factory=list)
    data: Data | None = None
    key: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "function": self.function,
            "controlid": self.controlid,
            "status": self.status,
            "errors": [_error_json(e) for e in self.errors],
            "data": self.data.to_json() if self.data else None,
        }
        if self.key is not None:
            out["key"] = self.key
        return out


@dataclass
class Authentication:
    status: str
    userid: str
    companyid: str
    locationid: str = ""
    sessiontimestamp: str = ""
    sessiontimeout: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "userid": self.userid,
            "companyid": self.companyid,
            "locationid": self.locationid,
            "sessiontimestamp": self.sessiontimestamp,
            "sessiontimeout": self.sessiontimeout,
        }


@dataclass
class Operation:
    authentication: Authentication
    errors: list[ErrorDetail] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)


@dataclass
class Response:
    control_status: str
    senderid: str = ""
    controlid: str = ""
    control_errors: list[ErrorDetail] = field(default_factory=list)
    acknowledgement: str | None = None
    operations: list[Operation] = field(default_factory=list)

    @property
    def authentication(self) -> Authentication | None:
        return self.operations[0].authentication if self.operations else None

    @property
    def results(self) -> list[Result]:
        return [r for op in self.operations for r in op.results]

    def to_json(self) -> dict[str, Any]:
        auth = self.authentication
        errors = list(self.control_errors)
        if self.operations and self.operations[0].errors:
            operation_errors = self.operations[0].errors
        else:
            operation_errors = []
        return {
            "control": {"status": self.control_status, "errors": [_error_json(e) for e in errors]},
            "acknowledgement": self.acknowledgement,
            "authentication": (
                {**auth.to_json(), "errors": [_error_json(e) for e in operation_errors]}
                if auth
                else None
            ),
            "results": [r.to_json() for r in self.results],
        }


def _error_json(error: ErrorDetail) -> dict[str, str]:
    return {
        "errorno": error.errorno,
        "description": error.description,
        "description2": error.description2,
        "correction": error.correction,
    }


def _text(el: etree._Element | None, tag: str) -> str | None:
    if el is None:
        return None
    child = el.find(tag)
    if child is None:
        return None
    return (child.text or "").strip()


def _required(el: etree._Element, tag: str, block: str) -> str:
    value = _text(el, tag)
    if value is None:
        raise ResponseStructureError(f"{block} block is missing its {tag} element")
    return value


def _errors(el: etree._Element | None) -> list[ErrorDetail]:
    if el is None:
        return []
    return [
        ErrorDetail(
            errorno=_text(e, "errorno") or "",
            description=_text(e, "description") or "",
            description2=_text(e, "description2") or "",
            correction=_text(e, "correction") or "",
        )
        for e in el.findall("error")
    ]


def record_of(el: etree._Element) -> Record:
    """A record element as a dict: text for leaves, dicts for nested, lists for repeats."""
    out: Record = {}
    for child in el:
        if not isinstance(child.tag, str):
            continue
        value: Any = record_of(child) if len(child) else (child.text or "")
        if child.tag in out:
            existing = out[child.tag]
            if isinstance(existing, list):
                existing.append(value)
            else:
                out[child.tag] = [existing, value]
        else:
            out[child.tag] = value
    return out


def _int_attr(el: etree._Element, name: str) -> int | None:
    raw = el.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ResponseStructureError(f"data attribute {name}={raw!r} is not a number") from None


def _data_attrs(el: etree._Element) -> Data:
    result_id = el.get("resultId")
    return Data(
        listtype=el.get("listtype", ""),
        count=_int_attr(el, "count"),
        totalcount=_int_attr(el, "totalcount"),
        numremaining=_int_attr(el, "numremaining"),
        resultid=result_id,
        offset=_int_attr(el, "offset"),
    )


def _authentication(el: etree._Element) -> Authentication:
    return Authentication(
        status=_required(el, "status", "Authentication"),
        userid=_required(el, "userid", "Authentication"),
        companyid=_required(el, "companyid", "Authentication"),
        locationid=_text(el, "locationid") or "",
        sessiontimestamp=_text(el, "sessiontimestamp") or "",
        sessiontimeout=_text(el, "sessiontimeout") or "",
    )


def _result_head(el: etree._Element) -> Result:
    return Result(
        function=_required(el, "function", "Result"),
        controlid=_required(el, "controlid", "Result"),
        status=_required(el, "status", "Result"),
        errors=_errors(el.find("errormessage")),
        key=_text(el, "key"),
    )


def _check_top(root: etree._Element) -> Response:
    if root.tag != "response":
        raise ResponseStructureError(f"the root element is <{root.tag}>, not <response>")
    control = root.find("control")
    if control is None:
        raise ResponseStructureError("Response is missing its control block")
    response = Response(
        control_status=_required(control, "status", "Control"),
        senderid=_text(control, "senderid") or "",
        controlid=_text(control, "controlid") or "",
        control_errors=_errors(root.find("errormessage")),
    )
    ack = root.find("acknowledgement")
    if ack is not None:
        response.acknowledgement = _required(ack, "status", "Acknowledgement")
    return response


def _structure(root: etree._Element, with_records: bool) -> Response:
    response = _check_top(root)
    operations = root.findall("operation")
    for op_el in operations:
        auth_el = op_el.find("authentication")
        if auth_el is None:
            raise ResponseStructureError("Operation is missing its authentication block")
        operation = Operation(_authentication(auth_el), _errors(op_el.find("errormessage")))
        result_els = op_el.findall("result")
        if operation.authentication.status == "success" and not result_els:
            raise ResponseStructureError("Operation has no result block")
        for result_el in result_els:
            result = _result_head(result_el)
            data_el = result_el.find("data")
            if data_el is not None:
                result.data = _data_attrs(data_el)
                if with_records:
                    result.data.records = (
                        _read_all(data_el)
                        if _speedups is not None
                        else [fast_record(r) for r in data_el if isinstance(r.tag, str)]
                    )
            operation.results.append(result)
        response.operations.append(operation)
    if response.control_status == "success" and not operations and response.acknowledgement is None:
        raise ResponseStructureError("Response is missing its operation (or acknowledgement) block")
    return response


def _read_all(data: etree._Element) -> list[Record]:
    """Every record under a parsed ``<data>`` (compiled), removed from the tree."""
    assert _speedups is not None
    records: list[Record] = _speedups.read_records(data, False)
    del data[: len(records)]
    return records


def parse_response(body: bytes, max_bytes: int = MAX_RESPONSE_BYTES) -> Response:
    """Parses a whole response document (hardened); raises XmlRejected or ResponseStructureError."""
    return _structure(parse_xml(body, max_bytes), with_records=True)


def _flat_record(el: etree._Element) -> Record:
    """``record_of`` for the common flat record, falling back to it when a field nests or
    repeats."""
    out: Record = {}
    for child in el:
        if len(child) or child.tag in out:
            return record_of(el)
        out[child.tag] = child.text or ""
    return out


def fast_record(el: etree._Element) -> Record:
    """One record element as ``record_of`` decodes it (compiled when available)."""
    if _speedups is not None:
        record: Record = _speedups.record(el)
        return record
    return _flat_record(el)


class StreamingResponseReader:
    """Incremental parse: feed chunks, take records as they complete, then ``close()``.

    Memory stays bounded by the largest record: each record element is turned
    into a dict and removed from the tree as soon as it ends. When the caller
    knows the records' element name (``record_tag``: the object it queried),
    libxml2 reports only those elements, which is what makes this fast.
    """

    def __init__(self, max_bytes: int = MAX_RESPONSE_BYTES, record_tag: str | None = None) -> None:
        safe = {
            "resolve_entities": False,
            "no_network": True,
            "load_dtd": False,
            "huge_tree": False,
            "remove_comments": True,
            "remove_pis": True,
        }
        self._tag = record_tag
        # With the compiled extractor, libxml2 reports only <result> and <data> as they
        # open, and records are read (and freed) from the tree after each chunk.
        self._compiled = bool(record_tag) and _speedups is not None
        self._datas: list[tuple[etree._Element, int]] = []
        self._finished = 0
        self._root: etree._Element | None = None
        # Records the end of the document completed, when close() was called without end().
        self.tail: list[Record] = []
        if self._compiled:
            self._parser = etree.XMLPullParser(events=("start",), tag=("result", "data"), **safe)
        elif record_tag:
            self._parser = etree.XMLPullParser(events=("end",), tag=record_tag, **safe)
        else:
            self._parser = etree.XMLPullParser(events=("start", "end"), **safe)
        self._max = max_bytes
        self._seen = 0
        self._prefix = b""
        self._depth = 0
        self._in_data = False
        # The attributes of the first <data> element (known when it opens, or at close).
        self.data: Data | None = None
        # For each record handed out, the index of its <result> in document order.
        self.record_results: list[int] = []
        self._owners: list[etree._Element] = []
        self._result_index = -1

    def feed(self, chunk: bytes) -> list[Record]:
        """Feeds bytes; returns the records completed by them."""
        self._seen += len(chunk)
        if self._seen > self._max:
            raise XmlRejected(f"response larger than {self._max} bytes")
        if len(self._prefix) < 65536:
            self._prefix += chunk[: 65536 - len(self._prefix)]
            if _DECLARATION.search(self._prefix):
                raise XmlRejected("DOCTYPE and entity declarations are not allowed")
        try:
            self._parser.feed(chunk)
        except etree.XMLSyntaxError as exc:
            raise XmlRejected(f"malformed XML: {exc.msg}") from None
        return self._take()

    def _take(self, at_end: bool = False) -> list[Record]:
        if self._compiled:
            return self._drain_compiled(at_end)
        return self._drain_tagged() if self._tag else self._drain()

    def _drain_compiled(self, at_end: bool) -> list[Record]:
        assert _speedups is not None
        for _event, el in self._parser.read_events():
            parent = el.getparent()
            if el.tag == "result" and parent is not None and parent.tag == "operation":
                self._result_index += 1
            elif el.tag == "data" and parent is not None and parent.tag == "result":
                if self.data is None:
                    self.data = _data_attrs(el)
                self._datas.append((el, self._result_index))
        done: list[Record] = []
        last = len(self._datas) - 1
        while self._finished <= last:
            data, result = self._datas[self._finished]
            # Only the newest <data> can still grow, and only until the document ends.
            growing = self._finished == last and not at_end
            records: list[Record] = _speedups.read_records(data, growing)
            del data[: len(records)]  # lxml frees them in C
            done.extend(records)
            self.record_results.extend([result] * len(records))
            if growing:
                break
            self._finished += 1
        return done

    def _drain_tagged(self) -> list[Record]:
        done: list[Record] = []
        for _event, el in self._parser.read_events():
            parent = el.getparent()
            if parent is None or parent.tag != "data":
                continue
            if self.data is None:
                self.data = _data_attrs(parent)
            done.append(fast_record(el))
            owner = parent.getparent()
            if owner is not None:
                self._owners.append(owner)
            parent.remove(el)
        return done

    def _drain(self) -> list[Record]:
        done: list[Record] = []
        for event, el in self._parser.read_events():
            if event == "start":
                self._depth += 1
                if el.tag == "result" and self._depth == 3:
                    self._result_index += 1
                if el.tag == "data" and self._depth == 4:
                    self._in_data = True
                    if self.data is None:
                        self.data = _data_attrs(el)
                continue
            self._depth -= 1
            if el.tag == "data" and self._depth == 3:
                self._in_data = False
            elif self._in_data and self._depth == 4 and isinstance(el.tag, str):
                done.append(fast_record(el))
                self.record_results.append(self._result_index)
                parent = el.getparent()
                if parent is not None:
                    parent.remove(el)
        return done

    def end(self) -> list[Record]:
        """Ends the document; returns the records only its end completes (the compiled
        reader holds back the newest record of a chunk until it knows it is whole)."""
        if self._root is not None:
            return []
        try:
            self._root = self._parser.close()
        except etree.XMLSyntaxError as exc:
            raise XmlRejected(f"malformed XML: {exc.msg}") from None
        records = self._take(at_end=True)
        if records and not self._compiled:
            raise ResponseStructureError("records arrived after the document ended")
        return records

    def close(self) -> Response:
        """Ends the document (see ``end``) and returns its structure; records handed out
        by ``feed`` and ``end`` are not in it."""
        self.tail = self.end()
        root = self._root
        assert root is not None
        check_bytes(self._prefix, self._max)
        if self._tag and not self._compiled:
            results = [r for op in root.findall("operation") for r in op.findall("result")]
            position = {id(r): i for i, r in enumerate(results)}
            self.record_results = [position.get(id(o), -1) for o in self._owners]
        return _structure(root, with_records=False)


def flatten(record: Record, prefix: str = "") -> dict[str, str]:
    """Nested record → dotted names (``DISPLAYCONTACT.MAILADDRESS.CITY``)."""
    out: dict[str, str] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            out[name] = ",".join(str(v) for v in value if not isinstance(v, dict))
        else:
            out[name] = value
    return out


_TEXT_ONLY = {str}


def as_rows(records: Iterable[Record]) -> list[tuple[list[str], list[list[str]]]]:
    """Flattened records as rows: each run of records with the same field names
    becomes those names and each record's values in their order.

    A query's records are flat and name their fields alike, so a page is one
    run, and a flat record is not copied field by field.
    """
    runs: list[tuple[list[str], list[list[str]]]] = []
    names: list[str] | None = None
    rows: list[list[str]] = []
    for record in records:
        keys, values = list(record), list(record.values())
        if set(map(type, values)) != _TEXT_ONLY:  # nested, repeated or empty
            flat = flatten(record)
            keys, values = list(flat), list(flat.values())
        if keys != names:
            names, rows = keys, []
            runs.append((names, rows))
        rows.append(values)
    return runs


def iter_records(body: bytes) -> Iterable[Record]:
    reader = StreamingResponseReader()
    yield from reader.feed(body)
    reader.close()
