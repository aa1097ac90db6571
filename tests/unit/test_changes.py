"""Unit and property tests for supasync.core.changes (payload shapes from realtime-protocol.md
§5.2)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supasync.core.changes import (
    Change,
    Column,
    change_from_row,
    decode_postgres_changes,
    format_timestamp,
    parse_timestamp,
)
from supasync.core.errors import ChangeDecodeError, SupasyncError

COLUMNS = [
    {"name": "id", "type": "int8"},
    {"name": "task", "type": "text"},
    {"name": "done", "type": "bool"},
]
TS = "2026-08-21T10:15:30.123Z"
WHEN = dt.datetime(2026, 8, 21, 10, 15, 30, 123000, tzinfo=dt.UTC)


def data(kind: str, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "schema": "public",
        "table": "todos",
        "commit_timestamp": TS,
        "type": kind,
        "errors": None,
        "columns": COLUMNS,
    }
    d.update(extra)
    return d


def test_insert() -> None:
    row = {"id": 1, "task": "buy milk", "done": False}
    c = decode_postgres_changes({"ids": [7], "data": data("INSERT", record=row)}, subscription="s")
    assert c.op == "INSERT"
    assert (c.schema, c.table) == ("public", "todos")
    assert c.new == row and c.old is None
    assert c.pk == (1,) and c.pk_columns == ("id",)
    assert c.key == ("public", "todos", (1,))
    assert c.row == row
    assert c.commit_timestamp == WHEN
    assert c.columns == (Column("id", "int8"), Column("task", "text"), Column("done", "bool"))
    assert c.origin == "live" and not c.partial and c.errors == ()
    assert c.subscription == "s" and c.version is None


def test_update_default_identity() -> None:
    row = {"id": 1, "task": "x", "done": True}
    c = decode_postgres_changes(data("UPDATE", record=row, old_record={"id": 1}))
    assert c.new == row and c.old == {"id": 1}
    assert c.pk_columns == ("id",) and c.pk == (1,)
    assert not c.partial


def test_update_full_identity_guesses_id() -> None:
    row = {"id": 1, "task": "x", "done": True}
    old = {"id": 1, "task": "y", "done": False}
    c = decode_postgres_changes(data("UPDATE", record=row, old_record=old))
    assert c.pk_columns == ("id",)
    assert c.old == old


def test_composite_key_from_old_record() -> None:
    cols = [{"name": "a", "type": "int4"}, {"name": "b", "type": "int4"},
            {"name": "v", "type": "text"}]
    c = decode_postgres_changes(
        data("DELETE", columns=cols, old_record={"a": 1, "b": 2})
    )
    assert c.pk_columns == ("a", "b") and c.pk == (1, 2)
    assert c.new is None and c.row == {"a": 1, "b": 2}


def test_delete() -> None:
    c = decode_postgres_changes(data("DELETE", old_record={"id": 3}))
    assert c.op == "DELETE" and c.new is None and c.old == {"id": 3}
    assert c.pk == (3,) and not c.partial


def test_explicit_pk_columns() -> None:
    row = {"id": 1, "org": "o", "task": "t", "done": False}
    c = decode_postgres_changes(data("INSERT", record=row), pk_columns=["org", "id"])
    assert c.pk_columns == ("org", "id") and c.pk == ("o", 1)


def test_pk_missing_marks_partial() -> None:
    c = decode_postgres_changes(data("INSERT", record={"task": "t"}), pk_columns=["id"])
    assert c.pk == () and c.partial


def test_no_id_and_no_hint_gives_unknown_key() -> None:
    c = decode_postgres_changes(data("INSERT", columns=[], record={"k": 1}))
    assert c.pk_columns == () and c.pk == () and c.partial


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        (None, ()),
        ([], ()),
        (["Error 413: Payload Too Large"], ("Error 413: Payload Too Large",)),
        ("Error 413: Payload Too Large", ("Error 413: Payload Too Large",)),
        ("", ()),
        ([None, "x"], ("x",)),
        (42, ("42",)),
    ],
)
def test_errors_shapes(errors: Any, expected: tuple[str, ...]) -> None:
    c = decode_postgres_changes(data("INSERT", errors=errors, record={"id": 1, "task": "t",
                                                                      "done": False}))
    assert c.errors == expected
    assert c.partial is bool(expected)


def test_error_413_truncated_record() -> None:
    c = decode_postgres_changes(
        data("UPDATE", errors=["Error 413: Payload Too Large"], record={"id": 1, "done": True},
             old_record={"id": 1})
    )
    assert c.partial and c.pk == (1,) and c.new == {"id": 1, "done": True}


@pytest.mark.parametrize(
    "code", ["Error 400: Bad Request, no primary key", "Error 401: Unauthorized"]
)
def test_error_400_401_shape(code: str) -> None:
    payload: dict[str, Any] = {
               "schema": "public", "table": "todos", "type": "INSERT", "errors": [code],
               "columns": [], "record": {}, "old_record": {}, "commit_timestamp": None}
    c = decode_postgres_changes({"ids": [1], "data": payload})
    assert c.partial and c.errors == (code,)
    assert c.new is None and c.old is None and c.pk == () and c.commit_timestamp is None


def test_toast_omitted_column_marks_partial() -> None:
    c = decode_postgres_changes(
        data("UPDATE", record={"id": 1, "done": True}, old_record={"id": 1})
    )
    assert c.partial and c.pk == (1,)


def test_missing_record_and_columns() -> None:
    c = decode_postgres_changes({"schema": "public", "table": "t", "type": "update"})
    assert c.op == "UPDATE" and c.partial and c.columns == () and c.new is None


@pytest.mark.parametrize(
    "text",
    [
        "2026-08-21T10:15:30.123Z",
        "2026-08-21T10:15:30.123000Z",
        "2026-08-21T10:15:30.123+00:00",
        "2026-08-21 10:15:30.123+00",
        "2026-08-21T12:15:30.123+02:00",
        "2026-08-21T10:15:30.123",
        "2026-08-21T10:15:30.1234567Z",
    ],
)
def test_timestamp_forms(text: str) -> None:
    parsed = parse_timestamp(text)
    assert parsed is not None
    assert parsed.replace(microsecond=123000) == WHEN
    assert parsed.tzinfo is dt.UTC


def test_timestamp_whole_seconds_and_bad() -> None:
    assert parse_timestamp("2026-08-21T10:15:30Z") == WHEN.replace(microsecond=0)
    assert parse_timestamp(None) is None
    assert parse_timestamp("") is None
    assert parse_timestamp("yesterday") is None
    assert parse_timestamp(12) is None
    c = decode_postgres_changes(data("INSERT", commit_timestamp="garbage", record={"id": 1}))
    assert c.commit_timestamp is None


def test_format_timestamp() -> None:
    assert format_timestamp(WHEN) == "2026-08-21T10:15:30.123000Z"
    assert format_timestamp(WHEN.replace(microsecond=0)) == "2026-08-21T10:15:30Z"
    assert format_timestamp(None) is None


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"data": {}},
        {"schema": "public", "type": "INSERT"},
        {"table": "t", "type": "INSERT"},
        {"schema": "public", "table": "t"},
        {"schema": "public", "table": "t", "type": "TRUNCATE"},
        {"schema": "public", "table": "t", "type": 3},
        {"schema": 1, "table": "t", "type": "INSERT"},
    ],
)
def test_decode_errors(payload: dict[str, Any]) -> None:
    with pytest.raises(ChangeDecodeError):
        decode_postgres_changes(payload)
    assert issubclass(ChangeDecodeError, SupasyncError)


def test_decode_rejects_non_mapping() -> None:
    with pytest.raises(ChangeDecodeError):
        decode_postgres_changes([1, 2])  # type: ignore[arg-type]


def test_to_dict_is_json_ready() -> None:
    c = decode_postgres_changes(data("INSERT", record={"id": 1, "task": "t", "done": False}))
    d = c.to_dict()
    assert d["commit_timestamp"] == "2026-08-21T10:15:30.123000Z"
    assert d["pk"] == [1] and d["columns"][0] == {"name": "id", "type": "int8"}
    assert json.loads(json.dumps(d)) == d
    r = change_from_row(
        "public", "t", "INSERT",
        {"id": uuid.UUID(int=1), "at": WHEN, "day": dt.date(2026, 1, 2),
         "n": decimal.Decimal("1.5"), "raw": b"\x01\xff", "tags": ("a", "b"),
         "span": dt.timedelta(seconds=3), "naive": dt.datetime(2026, 1, 1)},
        None, ["id"], origin="snapshot",
    )
    rd = r.to_dict()
    json.dumps(rd)
    assert rd["new"]["at"] == "2026-08-21T10:15:30.123000Z"
    assert rd["new"]["raw"] == "01ff" and rd["new"]["tags"] == ["a", "b"]
    assert rd["pk"] == [str(uuid.UUID(int=1))]


def test_change_from_row() -> None:
    c = change_from_row("public", "t", "UPDATE", {"id": 2, "v": 1}, None, ["id"], origin="replay",
                        commit_timestamp="2026-08-21T10:15:30.123Z", version=99, subscription="s")
    assert c.origin == "replay" and c.pk == (2,) and c.version == 99
    assert c.commit_timestamp == WHEN and c.old is None
    d = change_from_row("public", "t", "DELETE", None, {"id": 2}, ["id"], origin="replay")
    assert d.new is None and d.pk == (2,)
    d2 = change_from_row("public", "t", "DELETE", {"id": 5}, None, ["id"], origin="replay")
    assert d2.new is None and d2.old is None and d2.pk == (5,)
    with pytest.raises(ChangeDecodeError, match="primary-key"):
        change_from_row("public", "t", "INSERT", {"v": 1}, None, ["id"], origin="snapshot")
    with pytest.raises(ChangeDecodeError):
        change_from_row("public", "t", "INSERT", {"id": 1}, None, [], origin="snapshot")
    with pytest.raises(ChangeDecodeError):
        change_from_row("public", "t", "MERGE", {"id": 1}, None, ["id"],  # type: ignore[arg-type]
                        origin="snapshot")


def test_change_validation_and_helpers() -> None:
    base = Change("public", "t", "INSERT", {"id": 1}, None, (1,), ("id",), WHEN)
    assert base.with_origin("replay").origin == "replay"
    assert dataclasses.replace(base, partial=True).partial
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.op = "DELETE"  # type: ignore[misc]
    with pytest.raises(ValueError, match="op"):
        Change("public", "t", "MERGE", None, None, (), (), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="origin"):
        Change("public", "t", "INSERT", None, None, (), (), None,
               origin="cache")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="naive"):
        Change("public", "t", "INSERT", None, None, (), (), dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="pk"):
        Change("public", "t", "INSERT", None, None, (1, 2), ("id",), None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["INSERT", "UPDATE", "DELETE", "insert"]),
    st.dictionaries(
        st.sampled_from(["commit_timestamp", "errors", "columns", "record", "old_record", "ids"]),
        json_values,
    ),
    st.booleans(),
)
def test_decode_never_raises_on_odd_shapes(kind: str, extra: dict[str, Any], wrap: bool) -> None:
    payload = {"schema": "public", "table": "t", "type": kind, **extra}
    c = decode_postgres_changes({"ids": [1], "data": payload} if wrap else payload)
    assert c.op == kind.upper()
    assert c.commit_timestamp is None or c.commit_timestamp.tzinfo is not None
    assert len(c.pk) in (0, len(c.pk_columns))
    if c.pk == ():
        assert c.partial
    json.dumps(c.to_dict())


@given(
    kind=st.sampled_from(["INSERT", "UPDATE", "DELETE", "insert"]),
    record=st.one_of(st.none(), st.fixed_dictionaries(
        {"id": st.integers(), "task": st.text(max_size=5)},
        optional={"done": st.booleans()})),
    old=st.one_of(st.none(), st.fixed_dictionaries({"id": st.integers()})),
    ts=st.sampled_from([TS, None, "2026-08-21 10:15:30+02", " 2026-08-21T10:15:30Z ", "bad"]),
    errors=st.sampled_from([None, ["Error 413: Payload Too Large"], "Error 401: Unauthorized"]),
    pk=st.sampled_from([None, ("id",), ("id", "task")]),
)
@settings(max_examples=300, deadline=None)
def test_the_fast_decoder_builds_what_the_public_constructor_builds(
    kind: str, record: Any, old: Any, ts: Any, errors: Any, pk: Any
) -> None:
    """decode_postgres_changes builds Changes without __post_init__ (a measured hot spot):
    each one must pass the checked constructor's checks and equal what it makes."""
    extra: dict[str, Any] = {"commit_timestamp": ts, "errors": errors}
    if record is not None:
        extra["record"] = record
    if old is not None:
        extra["old_record"] = old
    c = decode_postgres_changes({"ids": [1], "data": data(kind, **extra)}, pk_columns=pk,
                                subscription="s")
    checked = Change(**{f.name: getattr(c, f.name) for f in dataclasses.fields(Change)})
    assert c == checked
    assert repr(c) == repr(checked)
    assert c.commit_timestamp is None or c.commit_timestamp.tzinfo is dt.UTC
