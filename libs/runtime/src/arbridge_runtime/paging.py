"""Keyset paging for List RPCs: page sizes from ``common.v1.PageRequest`` and next tokens.

A page is read with one row more than asked for; when that row exists, the
next token is the key of the page's last row, and the next page starts after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from arbridge.common.v1 import common_pb2
from arbridge.connector.v1 import connector_pb2
from arbridge_runtime.errors import InvalidArgument


def page_size(page: common_pb2.PageRequest, default: int = 100, maximum: int = 1000) -> int:
    """The rows to return: ``default`` when unset, at most ``maximum``."""
    if page.page_size < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(page.page_size or default, maximum)


def next_page(rows: Sequence[Mapping[str, Any]], size: int, key: str) -> common_pb2.PageResponse:
    """The response's page: a next token when more rows than ``size`` were read."""
    return common_pb2.PageResponse(
        next_page_token=str(rows[size - 1][key]) if len(rows) > size else ""
    )


def streamed_records(message: Any) -> Sequence[Any]:
    """The records one ``StreamRecordsResponse`` carries, as ``Record`` messages: rows,
    a batch, a single record, or none (the first message, which says how many will
    follow)."""
    shape = message.WhichOneof("item")
    if shape == "rows":
        rows = message.rows
        return [
            connector_pb2.Record(
                object_type=rows.object_type,
                record_no=row.record_no,
                when_modified=row.when_modified if row.HasField("when_modified") else None,
                fields=fields,
            )
            for row, fields in zip(rows.rows, _row_fields(rows), strict=True)
        ]
    if shape == "batch":
        return list(message.batch.records)
    if shape == "record":
        return [message.record]
    return []


def streamed_fields(message: Any) -> list[dict[str, str]]:
    """The fields of each record one ``StreamRecordsResponse`` carries, by name: for a
    reader that needs nothing else, without building a ``Record`` per row."""
    if message.WhichOneof("item") == "rows":
        return _row_fields(message.rows)
    return [dict(record.fields) for record in streamed_records(message)]


def _row_fields(rows: Any) -> list[dict[str, str]]:
    """Each row of a ``RecordRows`` as its fields by name."""
    names = list(rows.fields)
    return [dict(zip(names, row.values, strict=True)) for row in rows.rows]
