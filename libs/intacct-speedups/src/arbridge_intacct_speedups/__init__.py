"""Compiled helpers for arbridge_intacct (a Cython extension over lxml's C API).

``record(element)`` and ``read_records(data, keep_last)`` build records from
libxml2 nodes without an lxml proxy per field (only reading the tree; lxml
still owns and frees every node); arbridge_intacct falls back to
its pure Python decoder where this package is not installed.
"""

from arbridge_intacct_speedups._records import read_records, record

__all__ = ["read_records", "record"]
