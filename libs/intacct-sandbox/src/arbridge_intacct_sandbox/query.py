"""Intacct's two query languages, compiled to predicates over records.

* ``readByQuery``'s SQL-like string: comparisons (``= != <> < > <= >=``),
  ``[NOT] LIKE``, ``[NOT] IN (...)``, ``IS [NOT] NULL``, ``AND``/``OR``/``NOT``
  and parentheses; string literals in single quotes with backslash escapes;
  it compares stored codes (``STATUS = 'T'``), case-sensitively.
* ``query``'s XML ``<filter>``: ``equalto`` ... ``isnotnull``, ``between``,
  ``in``/``notin``, ``like``/``notlike`` nested in ``and``/``or``; it compares
  display values, optionally case-insensitively.

Values compare by the field's type: numbers numerically, dates and
timestamps (``MM/DD/YYYY[ HH:MM:SS]``) chronologically, text as text.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from lxml import etree

from arbridge_intacct_sandbox.schema import BOOL, DATE, DATETIME, DECIMAL, INT, FieldDef
from arbridge_runtime.dates import us_datetime

Predicate = Callable[[Mapping[str, str]], bool]


class QueryError(ValueError):
    """The query cannot be parsed or names a field the object does not have."""


# Dates and timestamps parsed, by their text: a query's scan compares every record's
# WHENMODIFIED, and parsing each again cost most of a first scan. Emptied when large.
_PARSED: dict[tuple[str, str], Any] = {}
_PARSED_MAX = 2_000_000


def typed(field: FieldDef, raw: str) -> Any:
    """A comparable value; None for empty."""
    if raw == "":
        return None
    kind = field.type
    if kind in (DATE, DATETIME):
        key = (kind, raw)
        parsed = _PARSED.get(key)
        if parsed is None:
            if len(_PARSED) >= _PARSED_MAX:
                _PARSED.clear()
            parsed = _PARSED[key] = _when(kind, raw)
        return parsed
    if kind in (INT, DECIMAL):
        try:
            return Decimal(raw)
        except InvalidOperation:
            return raw
    return raw


def _when(kind: str, raw: str) -> Any:
    try:
        if kind == DATE:
            return us_datetime(raw[:10]) or datetime.strptime(raw[:10], "%m/%d/%Y")
        if len(raw) > 10:
            return us_datetime(raw) or datetime.strptime(raw, "%m/%d/%Y %H:%M:%S")
        return us_datetime(raw) or datetime.strptime(raw, "%m/%d/%Y")
    except ValueError:
        return raw


def _literal(field: FieldDef, raw: str) -> Any:
    value = typed(field, raw)
    if field.type in (INT, DECIMAL, DATE, DATETIME) and isinstance(value, str):
        kind = {
            INT: "a number",
            DECIMAL: "a number",
            DATE: "a date MM/DD/YYYY",
            DATETIME: "a date MM/DD/YYYY or MM/DD/YYYY HH:MM:SS",
        }[field.type]
        raise QueryError(f"Invalid value '{raw}' for field {field.name}: expected {kind}")
    return value


def _like(pattern: str, case_insensitive: bool = False) -> re.Pattern[str]:
    parts = []
    for char in pattern:
        parts.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return re.compile("^" + "".join(parts) + "$", re.DOTALL | (re.I if case_insensitive else 0))


def _compare(op: str, left: Any, right: Any) -> bool:
    if left is None or right is None:
        return False
    if type(left) is not type(right):
        left, right = str(left), str(right)
    if op == "=":
        return bool(left == right)
    if op in ("!=", "<>"):
        return bool(left != right)
    if op == "<":
        return bool(left < right)
    if op == ">":
        return bool(left > right)
    if op == "<=":
        return bool(left <= right)
    return bool(left >= right)


@dataclass(frozen=True)
class FieldResolver:
    fields: Mapping[str, FieldDef]
    codes: bool  # readByQuery compares stored codes

    def resolve(self, name: str) -> FieldDef:
        for candidate in (name, name.upper(), name.lower()):
            if candidate in self.fields:
                return self.fields[candidate]
        raise QueryError(f"Invalid field: {name}")

    def getter(
        self, field: FieldDef, case_insensitive: bool = False
    ) -> Callable[[Mapping[str, str]], Any]:
        name = field.name
        if self.codes and field.codes:
            return lambda values: field.code_of(values.get(name, "")) or None
        if case_insensitive and field.type not in (INT, DECIMAL, DATE, DATETIME, BOOL):
            return lambda values: (values.get(name, "") or None) and values.get(name, "").lower()
        return lambda values: typed(field, values.get(name, ""))


# readByQuery ----------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    \s*(?:
      (?P<str>'(?:\\.|[^'\\])*')
     |(?P<num>-?\d+(?:\.\d+)?)
     |(?P<op><=|>=|<>|!=|=|<|>)
     |(?P<lp>\()|(?P<rp>\))|(?P<comma>,)
     |(?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise QueryError(f"Invalid query near '{text[pos : pos + 20]}'")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out.append((kind, value))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str, resolver: FieldResolver) -> None:
        self.tokens = _tokens(text)
        self.pos = 0
        self.resolver = resolver

    def peek_word(self) -> str:
        if self.pos < len(self.tokens) and self.tokens[self.pos][0] == "word":
            return self.tokens[self.pos][1].upper()
        return ""

    def take(self, kind: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise QueryError("Invalid query: unexpected end")
        token = self.tokens[self.pos]
        if kind and token[0] != kind:
            raise QueryError(f"Invalid query: expected {kind} near '{token[1]}'")
        self.pos += 1
        return token

    def parse(self) -> Predicate:
        if not self.tokens:
            return lambda _values: True
        predicate = self.or_expr()
        if self.pos != len(self.tokens):
            raise QueryError(f"Invalid query near '{self.tokens[self.pos][1]}'")
        return predicate

    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while self.peek_word() == "OR":
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else (lambda v: any(p(v) for p in parts))

    def and_expr(self) -> Predicate:
        parts = [self.not_expr()]
        while self.peek_word() == "AND":
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else (lambda v: all(p(v) for p in parts))

    def not_expr(self) -> Predicate:
        if self.peek_word() == "NOT":
            self.take()
            inner = self.not_expr()
            return lambda v: not inner(v)
        return self.primary()

    def primary(self) -> Predicate:
        if self.pos < len(self.tokens) and self.tokens[self.pos][0] == "lp":
            self.take()
            inner = self.or_expr()
            self.take("rp")
            return inner
        return self.comparison()

    def value(self, field: FieldDef) -> Any:
        kind, raw = self.take()
        if kind not in ("str", "num"):
            raise QueryError(f"Invalid query: expected a value near '{raw}'")
        return raw if self.resolver.codes and field.codes else _literal(field, raw)

    def comparison(self) -> Predicate:
        _, name = self.take("word")
        field = self.resolver.resolve(name)
        get = self.resolver.getter(field)
        word = self.peek_word()
        negate = False
        if word == "NOT":
            self.take()
            negate = True
            word = self.peek_word()
        if word == "LIKE":
            self.take()
            _, pattern = self.take("str")
            regex = _like(pattern)

            def like(v: Mapping[str, str]) -> bool:
                return bool(regex.match(v.get(field.name, ""))) != negate

            return like
        if word == "IN":
            self.take()
            self.take("lp")
            options = [self.value(field)]
            while self.pos < len(self.tokens) and self.tokens[self.pos][0] == "comma":
                self.take()
                options.append(self.value(field))
            self.take("rp")
            members = (
                set(map(str, options)) if any(isinstance(o, str) for o in options) else set(options)
            )
            return lambda v: (
                ((str(get(v)) if isinstance(next(iter(members)), str) else get(v)) in members)
                != negate
            )
        if word == "IS":
            self.take()
            is_not = False
            if self.peek_word() == "NOT":
                self.take()
                is_not = True
            if self.peek_word() != "NULL":
                raise QueryError("Invalid query: expected NULL after IS")
            self.take()
            return lambda v: (get(v) is None) != is_not
        if negate:
            raise QueryError("Invalid query: NOT must be followed by LIKE or IN here")
        kind, op = self.take()
        if kind != "op":
            raise QueryError(f"Invalid query: expected an operator after {name}")
        right = self.value(field)
        return lambda v: _compare(op, get(v), right)


def compile_read_by_query(text: str, fields: Mapping[str, FieldDef]) -> Predicate:
    return _Parser(text or "", FieldResolver(fields, codes=True)).parse()


# query <filter> --------------------------------------------------------------

_XML_OPS = {
    "equalto": "=",
    "notequalto": "!=",
    "lessthan": "<",
    "lessthanorequalto": "<=",
    "greaterthan": ">",
    "greaterthanorequalto": ">=",
}


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<>": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}
Comparison = tuple[FieldDef, Callable[[Any, Any], Any], Any]


def comparisons(
    element: etree._Element | None, fields: Mapping[str, FieldDef]
) -> list[Comparison] | None:
    """The filter as comparisons of number or date fields that must all hold (one
    leaf such as ``greaterthanorequalto``, or an ``and`` of them), for a scan over
    typed columns (:func:`holding`); None when it is anything else."""
    if element is None or len(element) != 1:
        return None
    node = element[0]
    leaves = list(node) if str(node.tag).lower() == "and" else [node]
    resolver = FieldResolver(fields, codes=False)
    found: list[Comparison] = []
    for leaf in leaves:
        tag = str(leaf.tag).lower()
        values = leaf.findall("value")
        if tag not in _XML_OPS or len(values) != 1:
            return None
        try:
            field = resolver.resolve(_text(leaf, "field"))
            if field.type not in (INT, DECIMAL, DATE, DATETIME):
                return None  # text compares by case and codes: the general way
            right = _literal(field, (values[0].text or "").strip())
        except QueryError:
            return None
        found.append((field, _OPERATORS[_XML_OPS[tag]], right))
    return found


def holding(
    positions: Iterable[int], column: Sequence[Any], test: Callable[[Any, Any], Any], right: Any
) -> list[int]:
    """The positions whose typed value in ``column`` passes ``test`` against ``right``,
    as :func:`_compare` decides (no value never passes; unlike types compare as text)."""
    kind = type(right)
    return [
        i
        for i in positions
        if (value := column[i]) is not None
        and (test(value, right) if type(value) is kind else test(str(value), str(right)))
    ]


def compile_filter(
    element: etree._Element | None, fields: Mapping[str, FieldDef], case_insensitive: bool = False
) -> Predicate:
    if element is None or len(element) == 0:
        return lambda _values: True
    if len(element) != 1:
        raise QueryError("filter takes exactly one condition (combine several with and/or)")
    return _compile_node(element[0], FieldResolver(fields, codes=False), case_insensitive)


def _text(node: etree._Element, tag: str) -> str:
    child = node.find(tag)
    if child is None:
        raise QueryError(f"{node.tag} needs a <{tag}>")
    return (child.text or "").strip()


def _compile_node(node: etree._Element, resolver: FieldResolver, ci: bool) -> Predicate:
    tag = str(node.tag).lower()
    if tag in ("and", "or"):
        parts = [_compile_node(child, resolver, ci) for child in node]
        if len(parts) < 2:
            raise QueryError(f"<{tag}> needs at least two conditions")
        return (
            (lambda v: all(p(v) for p in parts))
            if tag == "and"
            else (lambda v: any(p(v) for p in parts))
        )
    field = resolver.resolve(_text(node, "field"))
    get = resolver.getter(field, ci)

    def lit(raw: str) -> Any:
        return (
            raw.lower()
            if ci and field.type not in (INT, DECIMAL, DATE, DATETIME)
            else _literal(field, raw)
        )

    values = [(v.text or "").strip() for v in node.findall("value")]
    if tag in _XML_OPS:
        if len(values) != 1:
            raise QueryError(f"<{tag}> takes one <value>")
        right, op = lit(values[0]), _XML_OPS[tag]
        return lambda v: _compare(op, get(v), right)
    if tag == "between":
        if len(values) != 2:
            raise QueryError("<between> takes two <value>s, the earlier first")
        low, high = lit(values[0]), lit(values[1])
        return lambda v: _compare(">=", get(v), low) and _compare("<=", get(v), high)
    if tag in ("in", "notin"):
        if not values or len(values) > 1000:
            raise QueryError(f"<{tag}> takes 1 to 1000 <value>s")
        members = {lit(x) for x in values}
        negate = tag == "notin"
        return lambda v: (get(v) in members) != negate
    if tag in ("like", "notlike"):
        if len(values) != 1:
            raise QueryError(f"<{tag}> takes one <value>")
        regex = _like(values[0], ci)
        negate = tag == "notlike"
        return lambda v: bool(regex.match(v.get(field.name, ""))) != negate
    if tag in ("isnull", "isnotnull"):
        return lambda v: (get(v) is None) != (tag == "isnotnull")
    raise QueryError(f"Unknown filter operator <{node.tag}>")


def sort_values(
    items: list[Any],
    values_of: Callable[[Any], Mapping[str, str]],
    fields: Mapping[str, FieldDef],
    order: list[tuple[str, bool]],
) -> list[Any]:
    """Sorts by several fields (stable passes, last key first); empty values sort first."""
    resolver = FieldResolver(fields, codes=False)
    specs = [(resolver.resolve(name), ascending) for name, ascending in order]
    result = list(items)
    for field, ascending in reversed(specs):

        def key(item: Any, field: FieldDef = field) -> tuple[int, Any]:
            value = typed(field, values_of(item).get(field.name, ""))
            if value is None:
                return (0, "")
            return (1, value) if not isinstance(value, str) else (2, value)

        result.sort(key=key, reverse=not ascending)
    return result
