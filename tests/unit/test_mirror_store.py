"""The mirror's SQLite file: typed tables, batches in one transaction, schema changes, and
refusal to touch files it does not own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from supasync.core.changes import change_from_row
from supasync.core.errors import CacheError
from supasync.store.tables import MirrorStore, TableShape, mirror_table_name, sqlite_type

SHAPE = TableShape("public", "todos",
                   (("id", "int8"), ("task", "text"), ("done", "bool"), ("meta", "jsonb"),
                    ("tags", "_text"), ("price", "numeric"), ("at", "timestamptz")),
                   ("id",))


def ins(row: dict[str, object]):  # type: ignore[no-untyped-def]
    return change_from_row("public", "todos", "INSERT", row, None, ("id",), origin="live")


def test_types_and_names() -> None:
    assert sqlite_type("int4") == "INTEGER"
    assert sqlite_type("bool") == "INTEGER"
    assert sqlite_type("float8") == "REAL"
    assert sqlite_type("_int4") == "TEXT"
    assert sqlite_type("jsonb") == "TEXT"
    assert sqlite_type("timestamptz") == "TEXT"
    assert mirror_table_name("public", "todos") == "todos"
    assert mirror_table_name("sales", "orders") == "sales_orders"


def test_apply_insert_update_delete(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "m.sqlite")
    assert store.ensure_table(SHAPE) == "created"
    row = {"id": 1, "task": "a", "done": False, "meta": {"k": [1]}, "tags": ["x"],
           "price": 1.5, "at": "2026-01-01T00:00:00+00:00"}
    store.apply(SHAPE, [ins(row), ins({**row, "id": 2})])
    upd = change_from_row("public", "todos", "UPDATE", {**row, "done": True}, {"id": 1}, ("id",),
                          origin="live")
    dele = change_from_row("public", "todos", "DELETE", None, {"id": 2}, ("id",), origin="live")
    store.apply(SHAPE, [upd, dele])
    assert store.rows(SHAPE) == [{"id": 1, "task": "a", "done": 1, "meta": '{"k":[1]}',
                                  "tags": '["x"]', "price": 1.5,
                                  "at": "2026-01-01T00:00:00+00:00"}]


def test_batch_is_atomic(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "m.sqlite")
    store.ensure_table(SHAPE)
    bad = change_from_row("public", "todos", "INSERT", {"id": None, "task": "x"}, None, ("id",),
                          origin="live")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.transaction():
        store.upsert_rows(SHAPE, [{"id": 5, "task": "kept?"}])
        raise Boom
    store.apply(SHAPE, [ins({"id": 7, "task": "ok"})])
    assert [r["id"] for r in store.rows(SHAPE)] == [7]
    del bad


def test_schema_change_add_drop_and_type_change(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "m.sqlite")
    store.ensure_table(SHAPE)
    store.apply(SHAPE, [ins({"id": 1, "task": "a"})])
    store.mark_snapshot_complete("public", "todos")
    added = TableShape("public", "todos", (*SHAPE.columns[:2], ("extra", "int4")), ("id",))
    assert store.ensure_table(added) == "altered"
    assert store.rows(added) == [{"id": 1, "task": "a", "extra": None}]
    assert store.snapshot_complete("public", "todos")
    retyped = TableShape("public", "todos", (("id", "int8"), ("task", "int4"), ("extra", "int4")),
                         ("id",))
    assert store.ensure_table(retyped) == "resnapshot"
    assert not store.snapshot_complete("public", "todos")
    assert store.rows(retyped) == []


def test_reopen_resumes(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    store = MirrorStore(path)
    store.ensure_table(SHAPE)
    store.set_state("cursor:todos", "42")
    store.apply(SHAPE, [ins({"id": 1, "task": "a"})])
    store.close()
    again = MirrorStore(path)
    assert again.get_state("cursor:todos") == "42"
    assert again.ensure_table(SHAPE) == "unchanged"
    assert again.count(SHAPE) == 1


def test_new_files_get_larger_pages_and_old_files_keep_theirs(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "new.sqlite")
    assert store.db.execute("pragma page_size").fetchone()[0] == MirrorStore.PAGE_SIZE == 16384
    store.close()
    # A mirror made with SQLite's default 4 KiB pages (before PAGE_SIZE existed) is used as is.
    old = tmp_path / "old.sqlite"
    store = MirrorStore(old)
    store.close()
    db = sqlite3.connect(old)
    db.execute("pragma journal_mode=delete")
    db.execute("pragma page_size=4096")
    db.execute("vacuum")
    db.close()
    store = MirrorStore(old)
    assert store.db.execute("pragma page_size").fetchone()[0] == 4096
    store.ensure_table(SHAPE)
    store.apply(SHAPE, [ins({"id": 1, "task": "a"})])
    assert store.count(SHAPE) == 1
    store.close()


def test_refuses_foreign_and_corrupt_files(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("create table todos (x int)")
    db.commit()
    db.close()
    before = foreign.read_bytes()
    with pytest.raises(CacheError, match="did not create"):
        MirrorStore(foreign)
    assert foreign.read_bytes() == before
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheError, match="not a usable SQLite"):
        MirrorStore(corrupt)
    with pytest.raises(CacheError, match="directory"):
        MirrorStore(tmp_path)


def test_no_primary_key_is_refused(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "m.sqlite")
    with pytest.raises(CacheError, match="no primary key"):
        store.ensure_table(TableShape("public", "nopk", (("a", "int4"),), ()))


def test_partial_update_keeps_missing_columns(tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "m.sqlite")
    store.ensure_table(SHAPE)
    store.apply(SHAPE, [ins({"id": 1, "task": "long text", "done": False})])
    partial = change_from_row("public", "todos", "UPDATE", {"id": 1, "done": True}, {"id": 1},
                              ("id",), origin="live")
    import dataclasses

    partial = dataclasses.replace(partial, partial=True)
    store.apply(SHAPE, [partial])
    assert store.rows(SHAPE)[0]["task"] == "long text"
    assert store.rows(SHAPE)[0]["done"] == 1


def test_one_writer_per_file(tmp_path: Path) -> None:
    """Issue #17: two mirror processes ran side by side on one file with no lock."""
    path = tmp_path / "m.sqlite"
    first = MirrorStore(path)
    with pytest.raises(CacheError, match=r"being written by another supasync process \(pid \d+"):
        MirrorStore(path)
    first.close()
    again = MirrorStore(path)  # released on close (and by the OS when a process dies)
    again.close()
