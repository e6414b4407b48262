"""Smart-event bodies as Intacct sends them, in the three shapes arbridge accepts.

* XML (the set-up document's template): ``<intacct-event><object>ARINVOICE</object>
  <action>set</action><record><RECORDNO>…</RECORDNO>…</record></intacct-event>``;
* JSON: ``{"object": "ARINVOICE", "action": "set", "record": {"RECORDNO": "…"}}``;
* form: ``object=ARINVOICE&action=set&RECORDNO=…`` (usually a key only).

XML goes through the runtime's hardened parser. A body naming no object,
action or RECORDNO is refused with the reason.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass

from arbridge_runtime.xml import XmlRejected, parse_xml

MAX_EVENT_BYTES = 1024 * 1024
ACTIONS = {"add": "add", "set": "set", "delete": "delete", "create": "add", "update": "set"}


class BadEvent(ValueError):
    """The body is not an Intacct event arbridge understands."""


@dataclass(frozen=True)
class IntacctEvent:
    object: str
    action: str
    fields: dict[str, str]

    @property
    def record_no(self) -> str:
        return self.fields.get("RECORDNO", "")

    @property
    def carries_data(self) -> bool:
        """More than the key: enough to apply without asking Intacct."""
        return bool(self.fields.get("WHENMODIFIED")) and len(self.fields) > 2


def parse(body: bytes, content_type: str) -> IntacctEvent:
    kind = content_type.split(";")[0].strip().lower()
    if "json" in kind:
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadEvent("the JSON body does not parse") from None
        if not isinstance(data, dict):
            raise BadEvent("the JSON body must be an object")
        nested = data.get("record")
        record: dict[str, object] = (
            nested
            if isinstance(nested, dict)
            else {k: v for k, v in data.items() if k not in ("object", "action")}
        )
        return _event(
            str(data.get("object", "")),
            str(data.get("action", "")),
            {str(k): str(v) for k, v in record.items()},
        )
    if "x-www-form-urlencoded" in kind:
        try:
            pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            raise BadEvent("the form body is not UTF-8") from None
        values = dict(pairs)
        return _event(values.pop("object", ""), values.pop("action", ""), values)
    try:
        root = parse_xml(body, MAX_EVENT_BYTES)
    except XmlRejected as exc:
        raise BadEvent(f"the XML body is refused: {exc}") from None
    record_el = root.find("record")
    fields: dict[str, str] = {}
    holder = record_el if record_el is not None else root
    for child in holder:
        if isinstance(child.tag, str) and child.tag not in ("object", "action") and len(child) == 0:
            fields[child.tag] = (child.text or "").strip()
    return _event(root.findtext("object") or "", root.findtext("action") or "", fields)


def _event(obj: str, action: str, fields: dict[str, str]) -> IntacctEvent:
    obj = obj.strip().upper()
    normalized = ACTIONS.get(action.strip().lower())
    if not obj:
        raise BadEvent("the event names no object")
    if normalized is None:
        raise BadEvent(f"the action {action!r} is not add, set or delete")
    if not fields.get("RECORDNO", "").strip():
        raise BadEvent("the event carries no RECORDNO")
    return IntacctEvent(obj, normalized, fields)
