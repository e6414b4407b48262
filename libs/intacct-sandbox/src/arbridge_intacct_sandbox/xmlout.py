"""Fast XML writing for responses: strings, not trees (the sandbox's hot path)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_TEXT = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ATTR = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})


def esc(value: str) -> str:
    return value.translate(_TEXT)


def attr(value: str) -> str:
    return value.translate(_ATTR)


def element(tag: str, text: str) -> str:
    return f"<{tag}>{text.translate(_TEXT)}</{tag}>"


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
        parts.append(
            f"<{name}>{value.translate(_TEXT)}</{name}>" if value else f"<{name}></{name}>"
        )
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
            parts.append(f"<{key}>{text.translate(_TEXT)}</{key}>")
    parts.append(f"</{tag}>")
    return "".join(parts)
