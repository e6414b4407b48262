"""Access to shared/intacct-corpus (beside the checkout); tests skip when it is absent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lxml import etree

CORPUS = Path(__file__).resolve().parents[4] / "shared" / "intacct-corpus"


def available() -> bool:
    return (CORPUS / "manifest.json").exists()


def manifest() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())
    return entries


def read(entry: dict[str, Any]) -> bytes:
    return (CORPUS / "xml" / str(entry["file"])).read_bytes()


def function_of(entry: dict[str, Any]) -> etree._Element | None:
    """The <function> element of a request document or fragment."""
    root = etree.fromstring(read(entry))
    if root.tag == "function":
        return root
    return root.find(".//function")
