"""``arbridge intacct decode FILE``: print a response document as JSON.

Exit 0 for any well-formed Intacct response, whatever its statuses; exit 2
with a one-line reason on stderr for a malformed or structurally invalid one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from arbridge_intacct.response import ResponseStructureError, parse_response
from arbridge_runtime.xml import XmlRejected


def decode(body: bytes) -> dict[str, object]:
    return parse_response(body).to_json()


def run(path: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        body = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        print(f"arbridge intacct decode: cannot read {path}: {exc.strerror}", file=err)
        return 2
    try:
        document = decode(body)
    except (XmlRejected, ResponseStructureError) as exc:
        print(f"arbridge intacct decode: {path}: {exc}", file=err)
        return 2
    json.dump(document, out, indent=2)
    out.write("\n")
    return 0
