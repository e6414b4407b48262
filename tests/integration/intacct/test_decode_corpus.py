"""Every corpus response decodes as its manifest says; malformed ones are refused."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from arbridge_intacct.decode import run
from arbridge_intacct.response import (
    ResponseStructureError,
    StreamingResponseReader,
    parse_response,
)
from arbridge_runtime.xml import XmlRejected
from tests.integration.intacct import corpus

pytestmark = pytest.mark.skipif(not corpus.available(), reason="shared/intacct-corpus absent")


def _entries(prefix: str) -> list[dict[str, object]]:
    if not corpus.available():
        return []
    return [e for e in corpus.manifest() if str(e["role"]).startswith(prefix)]


GOOD = [e for e in _entries("response-") if "negative" not in str(e["role"])]
BAD = _entries("response-negative")


def test_the_corpus_has_both_kinds() -> None:
    assert len(GOOD) >= 100
    assert len(BAD) >= 40


@pytest.mark.parametrize("entry", GOOD, ids=lambda e: str(e["file"])[-60:])
def test_response_decodes_as_the_manifest_says(entry: dict[str, object]) -> None:
    body = corpus.read(entry)
    response = parse_response(body)
    assert response.control_status == entry["control"]
    auth = response.authentication
    assert (auth.status if auth else None) == entry["auth"]
    assert [[r.function, r.status] for r in response.results] == entry["results"]
    errornos = [e.errorno for e in response.control_errors]
    for operation in response.operations:
        errornos += [e.errorno for e in operation.errors]
        for result in operation.results:
            errornos += [e.errorno for e in result.errors]
    assert errornos == entry["errornos"]
    # The streaming reader agrees with the whole-document parser, chunk by chunk.
    reader = StreamingResponseReader()
    streamed = []
    for start in range(0, len(body), 97):
        streamed += reader.feed(body[start : start + 97])
    streamed += reader.end()
    again = reader.close()
    assert [[r.function, r.status] for r in again.results] == entry["results"]
    assert streamed == [rec for r in response.results if r.data for rec in r.data.records]


@pytest.mark.parametrize("entry", BAD, ids=lambda e: str(e["file"])[-60:])
def test_malformed_by_design_is_refused(entry: dict[str, object], tmp_path: Path) -> None:
    body = corpus.read(entry)
    with pytest.raises((ResponseStructureError, XmlRejected)):
        parse_response(body)
    path = tmp_path / "doc.xml"
    path.write_bytes(body)
    err = io.StringIO()
    assert run(str(path), out=io.StringIO(), err=err) == 2
    line = err.getvalue().strip()
    assert "\n" not in line
    assert line.startswith("arbridge intacct decode:")


def test_decode_prints_the_documented_json(tmp_path: Path) -> None:
    entry = next(e for e in GOOD if "readByQuery" in str(e["results"]))
    path = tmp_path / "doc.xml"
    path.write_bytes(corpus.read(entry))
    out = io.StringIO()
    assert run(str(path), out=out, err=io.StringIO()) == 0
    document = json.loads(out.getvalue())
    assert set(document) >= {"control", "authentication", "results"}
    assert set(document["control"]) == {"status", "errors"}
    result = next(r for r in document["results"] if r["function"] == "readByQuery")
    assert set(result) >= {"function", "controlid", "status", "errors", "data"}
    if result["data"] is not None:
        assert set(result["data"]) == {
            "listtype",
            "count",
            "totalcount",
            "numremaining",
            "resultid",
            "records",
        }
