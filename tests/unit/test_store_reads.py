"""The read model over a store file: any thread, typed values, filters in SQL that select
exactly what the live filter selects, and reads that reflect one journal position."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from supasync.core.errors import CacheError, FilterError
from supasync.core.filters import parse_filter
from supasync.store.reads import StoreReader
from supasync.store.tables import MirrorStore, TableShape

SHAPE = TableShape(
    "public", "items",
    (("id", "int8"), ("title", "text"), ("done", "bool"), ("score", "float8"),
     ("meta", "jsonb"), ("tags", "_text"), ("at", "timestamptz"), ("owner", "uuid"),
     ("day", "date")),
    ("id",))

ROWS = [
    {"id": 1, "title": "alpha", "done": False, "score": 1.5, "meta": {"k": 1}, "tags": ["a"],
     "at": "2026-01-01T10:00:00+00:00", "owner": "0b7f3c3e-1111-4a4a-8a8a-000000000001",
     "day": "2026-01-01"},
    {"id": 2, "title": "Beta", "done": True, "score": -2.0, "meta": None, "tags": [],
     "at": "2026-01-01T10:00:00.5+00:00", "owner": "0b7f3c3e-1111-4a4a-8a8a-000000000002",
     "day": "2026-02-01"},
    {"id": 3, "title": "gamma 100%", "done": None, "score": None, "meta": {"k": [1, 2]},
     "tags": ["a", "b"], "at": None, "owner": None, "day": None},
    {"id": 4, "title": None, "done": False, "score": 10.0, "meta": {}, "tags": None,
     "at": "2025-12-31T23:59:59.999999+00:00", "owner": "0b7f3c3e-1111-4a4a-8a8a-000000000001",
     "day": "2025-12-31"},
]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "r.sqlite"
    store = MirrorStore(path)
    store.ensure_table(SHAPE)
    with store.transaction():
        store.merge_rows(SHAPE, ROWS)
    store.close()
    return path


def test_get_returns_rows_as_the_server_renders_them(store_path: Path) -> None:
    with StoreReader(store_path) as reader:
        assert reader.get("items", [1]) == ROWS[0]
        assert reader.get("items", (2,))["done"] is True  # type: ignore[index]
        assert reader.get("items", [99]) is None
        with pytest.raises(ValueError, match="primary key has 1 column"):
            reader.get("items", [1, 2])


FILTERS = [
    "id=eq.2", "id=gt.1", "id=lte.2", "id=neq.3", "id=in.(1,3,9)", "id=not.in.(1,3)",
    "title=eq.alpha", "title=neq.alpha", "title=like.gam*", "title=ilike.BETA",
    "title=like.*100\\%", "title=match.^[ab]", "title=imatch.^b", "title=is.null",
    "title=not.is.null", "done=eq.true", "done=eq.false", "done=not.eq.false", "done=is.true",
    "done=not.is.true", "done=is.null", "done=is.false", "score=gt.0", "score=lt.1.5",
    "score=gte.1.5", "score=not.gt.0", "at=gt.2026-01-01T10:00:00Z",
    "at=lt.2026-01-01T10:00:00.4+00:00", "at=eq.2026-01-01 11:00:00+01", "day=gte.2026-01-01",
    "owner=eq.0B7F3C3E-1111-4A4A-8A8A-000000000001", "meta=eq.{}", "id=isdistinct.2",
    "title=isdistinct.alpha", "title=not.isdistinct.alpha", "done=eq.true,score=lt.0",
    "id=gt.1,title=not.is.null",
]


@pytest.mark.parametrize("text", FILTERS)
def test_filters_in_sql_select_what_the_live_filter_selects(store_path: Path, text: str) -> None:
    f = parse_filter(text)
    expected = [r["id"] for r in ROWS if f.matches(r)]
    with StoreReader(store_path) as reader:
        assert [r["id"] for r in reader.rows("items", text)] == expected
        assert reader.count("items", f) == len(expected)


def test_order_limit_and_bad_input(store_path: Path) -> None:
    with StoreReader(store_path) as reader:
        assert [r["id"] for r in reader.rows("items", order_by="-score", limit=2)] == [4, 1]
        assert [r["id"] for r in reader.rows("items", order_by="done.desc,id")] == [2, 1, 4, 3]
        with pytest.raises(FilterError, match="no column 'nope'"):
            reader.count("items", "nope=eq.1")
        with pytest.raises(FilterError, match="cannot order by"):
            list(reader.rows("items", order_by="nope"))
        with pytest.raises(FilterError, match="not a valid int8"):
            reader.count("items", "id=eq.abc")
        with pytest.raises(CacheError, match="no table 'other'"):
            reader.get("other", [1])
    with pytest.raises(CacheError, match="does not exist"):
        StoreReader(store_path.parent / "missing.sqlite")


def test_reads_from_many_threads_while_the_writer_writes(store_path: Path) -> None:
    writer = MirrorStore(store_path)
    reader = StoreReader(store_path)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_loop() -> None:
        try:
            while not stop.is_set():
                result = reader.read("items")
                ids = [r["id"] for r in result.rows]
                # A batch writes ids in pairs (one transaction): never half of one.
                assert len([i for i in ids if i >= 100]) % 2 == 0
                assert reader.get("items", [1]) is not None
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=read_loop) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(100, 400, 2):
            with writer.transaction():
                writer.merge_rows(SHAPE, [{"id": i, "title": "n"}, {"id": i + 1, "title": "n"}])
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    reader.close()
    writer.close()
    assert not errors, errors[0]


def test_read_reports_the_position_its_rows_reflect(store_path: Path) -> None:
    writer = MirrorStore(store_path)
    with StoreReader(store_path) as reader:
        first = reader.read("items", "done=eq.false")
        assert [r["id"] for r in first.rows] == [1, 4]
        with writer.transaction():
            writer.merge_rows(SHAPE, [{**ROWS[1], "done": False}])
        follow = reader.changes_since("items", first.seq)
        assert [(e.op, e.pk) for e in follow.entries] == [("U", (2,))]
        assert reader.seq() == follow.seq > first.seq
    writer.close()
