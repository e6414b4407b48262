"""Fast XML writing for responses: strings, not trees (the sandbox's hot path)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def esc(value: str) -> str:
    """Text for element content. Most values need nothing escaped and are returned as
    they are: a search for the three characters costs a fraction of ``str.translate``,
    which looked each character up and was most of the time a page of records took."""
    if "&" in value or "<" in value or ">" in value:
        return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return value


def attr(value: str) -> str:
    escaped = esc(value)
    return escaped.replace('"', "&quot;") if '"' in escaped else escaped


def element(tag: str, text: str) -> str:
    return f"<{tag}>{esc(text)}</{tag}>"


@dataclass(frozen=True)
class Err:
    """An Intacct error block."""

    errorno: str
    description: str = ""
    description2: str = ""
    correction: str = ""

    def xml(self) -> str:
        return (
            f"<error>{element('errorno', self.errorno)}{element('description', self.description)}"
            f"{element('description2', self.description2)}"
            f"{element('correction', self.correction)}</error>"
        )


def errors_xml(errors: Iterable[Err]) -> str:
    return "<errormessage>" + "".join(e.xml() for e in errors) + "</errormessage>"


def flat_record(tag: str, values: Mapping[str, str], names: Iterable[str]) -> str:
    """A record with dotted names kept flat (the ``query`` function's shape)."""
    get = values.get
    parts = [f"<{tag}>"]
    for name in names:
        value = get(name, "")
        parts.append(f"<{name}>{esc(value)}</{name}>" if value else f"<{name}></{name}>")
    parts.append(f"</{tag}>")
    return "".join(parts)


def nested_record(tag: str, values: Mapping[str, str], names: Iterable[str]) -> str:
    """A record with dotted names nested (``read`` and ``readByQuery``)."""
    tree: dict[str, object] = {}
    for name in names:
        node = tree
        parts = name.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = values.get(name, "")
    return _render(tag, tree)


def _render(tag: str, node: Mapping[str, object]) -> str:
    parts = [f"<{tag}>"]
    for key, value in node.items():
        if isinstance(value, dict):
            parts.append(_render(key, value))
        else:
            text = str(value)
            parts.append(f"<{key}>{esc(text)}</{key}>")
    parts.append(f"</{tag}>")
    return "".join(parts)
