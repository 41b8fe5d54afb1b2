"""The archive's row format: values written and read back exactly, PostgreSQL's reading
rules for escapes, and every kind of forged value refused with its column named."""

from __future__ import annotations

import pytest

from esc.backup.copytext import (
    NULL,
    RowFormatError,
    escape,
    field_reader,
    field_writer,
    split_row,
    unescape,
)
from esc.backup.tables import Kind
from esc.db.models import CustomScript, Tenant, Transaction, VmGroup

TRICKY = [
    "",
    "plain",
    "tab\there",
    "new\nline\r\n",
    "back\\slash \\N \\t",
    "\\",
    "café ☕ \U0001f600",
    '{"a": "\\"quoted\\"\\n"}',
]


@pytest.mark.parametrize("value", TRICKY)
def test_a_value_survives_escape_and_unescape(value: str) -> None:
    field = escape(value)
    assert "\t" not in field and "\n" not in field and "\r" not in field
    assert field != NULL  # a text "\N" is written "\\N", never taken for NULL
    assert unescape(field) == value


def test_a_row_of_tricky_values_splits_back_into_them() -> None:
    write = field_writer(Kind.PLAIN)
    line = "\t".join([*map(write, TRICKY), write(None), write(7), write(2.5)]).encode()
    assert split_row(line, len(TRICKY) + 3) == [*TRICKY, None, "7", "2.5"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("\\x41\\102", "AB"),  # hex and octal, as COPY FROM reads them
        ("\\q\\.", "q."),  # any other character stands for itself
        ("\\b\\f\\v", "\b\f\v"),
    ],
)
def test_escapes_are_read_as_postgresql_reads_them(field: str, value: str) -> None:
    assert unescape(field) == value


def test_an_escaped_byte_beyond_ascii_is_refused() -> None:
    with pytest.raises(RowFormatError, match="not ASCII"):
        unescape("\\xff")


def test_a_row_of_the_wrong_width_or_encoding_is_refused() -> None:
    with pytest.raises(RowFormatError, match="2 values, the table has 3"):
        split_row(b"a\tb", 3)
    with pytest.raises(RowFormatError, match="not UTF-8"):
        split_row(b"\xff\tb", 2)


def test_sqlite_values_are_written_in_the_canonical_forms() -> None:
    assert field_writer(Kind.DATETIME)("2026-11-27 09:00:00.000001") == (
        "2026-11-27 09:00:00.000001+00"
    )
    assert [field_writer(Kind.BOOL)(v) for v in (1, 0, None)] == ["t", "f", NULL]
    assert field_writer(Kind.JSON)('{"k": "a\tb"}') == '{"k": "a\\tb"}'


def reader(model: type, column: str):
    return field_reader(model.__tablename__, model.__table__.columns[column])


def test_fields_are_read_into_sqlite_values() -> None:
    assert reader(Tenant, "created_at")("2026-11-27 09:00:00.5+00") == "2026-11-27 09:00:00.500000"
    assert reader(Tenant, "created_at")("2026-11-27T10:00:00+01:00") == (
        "2026-11-27 09:00:00.000000"
    )
    assert reader(VmGroup, "elastic")("t") == 1 and reader(VmGroup, "elastic")("f") == 0
    assert reader(VmGroup, "min_active")("12") == 12
    assert reader(CustomScript, "timeout")("2.5") == 2.5
    assert reader(Transaction, "request")('{"a": [1]}') == '{"a": [1]}'
    assert reader(Tenant, "name")("x\ty") == "x\ty"
    assert all(reader(Tenant, c)(None) is None for c in ("name", "created_at"))


@pytest.mark.parametrize(
    ("model", "column", "field", "wanted"),
    [
        (Tenant, "created_at", "not a time", "an ISO 8601 timestamp"),
        (VmGroup, "elastic", "true", "t or f"),
        (VmGroup, "min_active", "1.5", "an integer"),
        (CustomScript, "timeout", "soon", "a number"),
        (Transaction, "request", "{not json", "JSON"),
    ],
)
def test_a_forged_value_is_refused_naming_its_column(
    model: type, column: str, field: str, wanted: str
) -> None:
    with pytest.raises(RowFormatError) as refused:
        reader(model, column)(field)
    assert f"{model.__tablename__}.{column}" in str(refused.value)
    assert wanted in str(refused.value)
