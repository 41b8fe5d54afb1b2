"""The archive's row format (format version 2): PostgreSQL's COPY text format.

One line per row; values separated by tabs, `\\N` for NULL; inside a value a
backslash, newline, carriage return or tab is written `\\\\`, `\\n`, `\\r`,
`\\t`. It is a plain, documented text format that any tool reads, and the
one PostgreSQL itself reads and writes fastest (COPY ... FROM/TO STDIN, as
pg_dump and pg_restore do): restoring a large backup into PostgreSQL costs
little more than pg_restore, where parsing JSON rows in the server cost
three times as much.

Values have one canonical form whatever the backend wrote them, so a backup
of SQLite restores into PostgreSQL and the other way round: integers and
floats in decimal, booleans `t`/`f`, timestamps `YYYY-MM-DD HH:MM:SS[.ffffff]+00`
(UTC), JSON columns as JSON text, text as it is.

PostgreSQL converts and checks values itself; for SQLite, which would store
any value in any column, this module does (field_reader).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, Float, Integer, Numeric

from esc.backup.tables import Kind, column_kinds, iso_to_sqlite_timestamp

NULL = "\\N"
# PostgreSQL session settings under which COPY writes (and reads) those canonical forms.
CANONICAL_SETTINGS = (
    "TIME ZONE 'UTC'",
    "DateStyle = 'ISO, YMD'",
    "extra_float_digits = 1",
    "client_encoding = 'UTF8'",
)
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
# What COPY FROM reads after a backslash (PostgreSQL's rules, so both backends
# read a member alike): the control-character codes, octal and hex bytes, and
# any other character standing for itself.
_SEQUENCE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.DOTALL)
_CODES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def escape(value: str) -> str:
    return value.translate(_ESCAPES)


def _sequence(match: re.Match[str]) -> str:
    octal, hexa, other = match.groups()
    if other is not None:
        return _CODES.get(other, other)
    code = int(octal, 8) & 0xFF if octal is not None else int(hexa, 16)
    if code > 0x7F:  # PostgreSQL would take it as one byte of a UTF-8 sequence; never written
        raise RowFormatError(f"escaped byte {match.group(0)!r} is not ASCII")
    return chr(code)


def unescape(field: str) -> str:
    return _SEQUENCE.sub(_sequence, field) if "\\" in field else field


class RowFormatError(ValueError):
    """A line that is not a row of its table in the archive's format."""


def split_row(line: bytes, width: int) -> list[str | None]:
    """One line's values, unescaped; None for NULL."""
    try:
        text = line.decode()
    except UnicodeDecodeError:
        raise RowFormatError("a row is not UTF-8 text") from None
    fields = text.split("\t")
    if len(fields) != width:
        raise RowFormatError(f"a row has {len(fields)} values, the table has {width} columns")
    return [None if f == NULL else unescape(f) for f in fields]


# --- SQLite ---------------------------------------------------------------------------
# SQLAlchemy keeps in SQLite: timestamps as naive UTC text "YYYY-MM-DD HH:MM:SS.ffffff",
# JSON as JSON text, booleans as 0/1.


def field_writer(kind: Kind) -> Callable[[Any], str]:
    """A SQLite value as a field of the archive."""
    if kind is Kind.DATETIME:
        return lambda v: NULL if v is None else f"{v}+00"
    if kind is Kind.BOOL:
        return lambda v: NULL if v is None else ("t" if v else "f")
    return lambda v: NULL if v is None else v.translate(_ESCAPES) if isinstance(v, str) else repr(v)


def field_reader(table: str, column: Column[Any]) -> Callable[[str | None], Any]:
    """A field of the archive as a SQLite value, checked against its column: a forged
    value is refused here, as PostgreSQL's input functions refuse it there."""
    kind = column_kinds(column.table)[column.name]
    if kind is Kind.DATETIME:
        convert: Callable[[str], Any] = iso_to_sqlite_timestamp
        wanted = "an ISO 8601 timestamp"
    elif kind is Kind.JSON:
        convert, wanted = _json_text, "JSON"
    elif kind is Kind.BOOL:
        convert, wanted = _bool, "t or f"
    elif isinstance(column.type, Integer):
        convert, wanted = int, "an integer"
    elif isinstance(column.type, Float | Numeric):
        convert, wanted = float, "a number"
    else:
        return lambda v: v

    def read(value: str | None) -> Any:
        if value is None:
            return None
        try:
            return convert(value)
        except ValueError:
            raise RowFormatError(f"{table}.{column.name}: {value[:40]!r} is not {wanted}") from None

    return read


def _json_text(value: str) -> str:
    json.loads(value)  # kept as written; only its validity is checked
    return value


def _bool(value: str) -> int:
    if value not in ("t", "f"):
        raise ValueError(value)
    return int(value == "t")
