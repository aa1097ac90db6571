"""The cache stores (supasync.store): one contract, two implementations, and the store file's
view that the merger reads by key (no row held in Python)."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supasync.core.errors import CacheError, ConfigError
from supasync.core.merge import CachedRow, Merger, RowWrite, Versioning
from supasync.store import JOURNAL_LIMIT, CacheFile, JournalEntry, Store, open_store
from supasync.store.cache import local_table_name
from supasync.store.memory import MemoryStore
from supasync.store.reads import StoreReader
from supasync.store.tables import TableShape

SHAPE = TableShape("public", "items", (("id", "int8"), ("v", "text"), ("n", "int4"),
                                       ("done", "bool"), ("meta", "jsonb")), ("id",))
PAIR = TableShape("public", "pairs", (("k", "text"), ("n", "int4"), ("x", "text")), ("k", "n"))


def _version(row: object) -> int | None:
    return None


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else CacheFile(None)
    yield s
    s.close()


def _rows(store: Store, name: str) -> dict[tuple[object, ...], dict[str, object]]:
    view = store.view(name, _version)
    return {r.pk: {k: v for k, v in r.row.items() if v is not None} for r in view.rows()}


def test_rows_cursor_and_journal_round_trip(store: Store) -> None:
    assert store.meta("s") is None
    store.reset("s", "fp1")
    store.prepare("s", SHAPE)
    assert store.meta("s") is not None and store.meta("s").fingerprint == "fp1"  # type: ignore[union-attr]
    store.write(
        "s",
        [RowWrite((1,), {"id": 1, "v": "a", "done": True, "meta": {"a": [1]}}),
         RowWrite((2,), {"id": 2, "n": 2})],
        cursor={"mode": "exact", "horizon": "42"},
        journal=[JournalEntry("repair", {"mode": "exact", "inserted": 2})],
    )
    assert _rows(store, "s") == {(1,): {"id": 1, "v": "a", "done": True, "meta": {"a": [1]}},
                                 (2,): {"id": 2, "n": 2}}
    meta = store.meta("s")
    assert meta is not None and meta.cursor == {"mode": "exact", "horizon": "42"}
    store.write("s", [RowWrite((1,), None), RowWrite((2,), {"id": 2, "n": 3})])
    assert _rows(store, "s") == {(2,): {"id": 2, "n": 3}}
    meta = store.meta("s")
    assert meta is not None and meta.cursor == {"mode": "exact", "horizon": "42"}  # unchanged
    assert [e.kind for e in store.journal("s")] == ["reset", "repair"]
    assert store.journal("s")[-1].detail == {"mode": "exact", "inserted": 2}


def test_subscriptions_are_separate_and_reset_forgets(store: Store) -> None:
    store.reset("a", "fa")
    store.prepare("a", SHAPE)
    store.reset("b", "fb")
    store.prepare("b", TableShape("public", "items", SHAPE.columns, ("id",), "items__b"))
    store.write("a", [RowWrite((1,), {"id": 1})], cursor={"c": 1})
    assert _rows(store, "b") == {}
    store.reset("a", "fa2", reason="fingerprint changed")
    assert _rows(store, "a") == {}
    meta = store.meta("a")
    assert meta is not None and meta.cursor is None and meta.fingerprint == "fa2"
    assert store.journal("a")[-1].detail == {"reason": "fingerprint changed"}


def test_write_needs_reset_first(store: Store) -> None:
    with pytest.raises(CacheError, match="call reset"):
        store.write("nope", [RowWrite((1,), {"id": 1})])


def test_journal_is_trimmed(store: Store) -> None:
    store.reset("s", "f")
    for i in range(JOURNAL_LIMIT + 20):
        store.write("s", [], journal=[JournalEntry("repair", {"i": i})])
    entries = store.journal("s")
    assert len(entries) == JOURNAL_LIMIT
    assert entries[-1].detail == {"i": JOURNAL_LIMIT + 19}
    assert len(store.journal("s", limit=3)) == 3


def _file() -> Path:
    return Path(tempfile.mkdtemp(prefix="supasync-test-cache-")) / "c.sqlite"


def test_table_names() -> None:
    assert local_table_name("public.todos", "public", "todos") == "todos"
    assert local_table_name("sales.orders", "sales", "orders") == "sales_orders"
    assert local_table_name("open", "public", "todos") == "todos__open"
    assert local_table_name("public.todos#2", "public", "todos") == "todos__2"
    assert local_table_name("my subs!", "public", "todos") == "todos__my_subs"
    assert local_table_name("todos", "public", "todos") == "todos"


def test_file_is_a_store_file_typed_and_journaled() -> None:
    """A cache file is the mirror's format: a typed table named like the source, the journal,
    readable by StoreReader (and any SQLite client) while the writer runs."""
    path = _file()
    s = CacheFile(path)
    s.reset("public.items", "fp")
    assert s.prepare("public.items", SHAPE) == "created"
    assert s.table_name("public.items") == "items"
    s.write("public.items", [RowWrite((1,), {"id": 1, "v": "a", "done": False},
                                      origin="live", committed="2026-12-06T10:00:00+00:00")])
    with StoreReader(path) as reader:
        assert reader.get("items", [1]) == {"id": 1, "v": "a", "n": None, "done": False,
                                             "meta": None}
        read = reader.changes_since("items", 0)
        assert [(e.op, e.origin, e.commit_timestamp) for e in read.entries] == [
            ("I", "live", "2026-12-06T10:00:00+00:00")]
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
        assert db.execute("select id, v, done from items").fetchall() == [(1, "a", 0)]
        types = {r[1]: r[2] for r in db.execute("pragma table_info(items)")}
        assert types == {"id": "INTEGER", "v": "TEXT", "n": "INTEGER", "done": "INTEGER",
                         "meta": "TEXT"}
    s.close()


def test_file_resumes_where_it_stopped() -> None:
    path = _file()
    s = CacheFile(path)
    s.reset("s", "fp")
    s.prepare("s", SHAPE)
    s.write("s", [RowWrite((1,), {"id": 1, "v": "x"})], cursor={"horizon": "9"})
    s.close()
    s = CacheFile(path)
    assert _rows(s, "s") == {(1,): {"id": 1, "v": "x"}}
    meta = s.meta("s")
    assert meta is not None and meta.cursor == {"horizon": "9"} and meta.fingerprint == "fp"
    s.close()


def test_file_batch_is_atomic() -> None:
    """A failure mid-batch leaves neither the rows nor the cursor."""
    path = _file()
    s = CacheFile(path)
    s.reset("s", "fp")
    s.prepare("s", SHAPE)
    s.write("s", [RowWrite((1,), {"id": 1})], cursor={"c": 1})
    s.db.execute("create trigger poison before insert on items when new.v = 'poison'"
                 " begin select raise(abort, 'poisoned'); end")
    with pytest.raises(CacheError, match="poisoned"):
        s.write("s", [RowWrite((2,), {"id": 2}), RowWrite((3,), {"id": 3, "v": "poison"})],
                cursor={"c": 2})
    assert list(_rows(s, "s")) == [(1,)]
    meta = s.meta("s")
    assert meta is not None and meta.cursor == {"c": 1}
    s.close()


def test_temporary_file_is_removed() -> None:
    s = CacheFile(None)
    path = s.path
    assert path.exists() and s.temporary
    s.close()
    assert not path.exists() and not path.parent.exists()


def test_refuses_other_files() -> None:
    path = _file()
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(CacheError, match="not a usable SQLite database"):
        CacheFile(path)
    other = _file()
    with sqlite3.connect(other) as db:
        db.execute("create table customers (id integer primary key)")
    with pytest.raises(CacheError, match="did not create"):
        CacheFile(other)


def test_first_format_cache_is_replaced(caplog: pytest.LogCaptureFixture) -> None:
    path = _file()
    with sqlite3.connect(path) as db:
        db.execute("create table supasync_cache_info (key text primary key, value text)")
        db.execute("insert into supasync_cache_info values ('format', '1')")
    s = CacheFile(path)
    assert s.meta("s") is None
    assert "older supasync format" in caplog.text
    s.close()


def test_stored_view_reads_by_key_in_batches() -> None:
    s = CacheFile(None)
    s.reset("s", "fp")
    s.prepare("s", SHAPE)
    s.write("s", [RowWrite((i,), {"id": i, "v": f"r{i}", "done": i % 2 == 0})
                  for i in range(1, 501)])
    view = s.view("s", Versioning("n").of)
    assert len(view) == 500
    row = view.get((7,))
    assert row is not None and row.row["done"] is False and row.pk == (7,)
    assert view.get((9999,)) is None
    view.prefetch([(1,), (2,), (9999,)])
    assert view.get((2,)) is not None and view.get((9999,)) is None
    view.forget()
    view.mark([(k,) for k in range(1, 490)])
    gone = [r.pk for chunk in view.unmarked(5) for r in chunk]
    assert gone == [(k,) for k in range(490, 501)]
    view.clear_marks()
    assert sum(len(c) for c in view.unmarked(100)) == 500
    s.close()


def test_stored_view_composite_keys() -> None:
    s = CacheFile(None)
    s.reset("s", "fp")
    s.prepare("s", PAIR)
    s.write("s", [RowWrite(("a", 1), {"k": "a", "n": 1, "x": "one"}),
                  RowWrite(("a", 2), {"k": "a", "n": 2, "x": "two"})])
    view = s.view("s", _version)
    view.prefetch([("a", 2), ("b", 1)])
    assert view.get(("a", 2)) == CachedRow(("a", 2), {"k": "a", "n": 2, "x": "two"}, None)
    assert view.get(("b", 1)) is None
    view.mark([("a", 1)])
    assert view.is_marked(("a", 1)) and not view.is_marked(("a", 2))
    assert [r.pk for c in view.unmarked(10) for r in c] == [("a", 2)]
    s.close()


def test_merger_over_the_file_keeps_no_rows() -> None:
    """The merger's decisions over a store-backed view equal those over a dict, with the rows
    only in SQLite: a diff repair of 300 rows (100 changed, 50 gone, 20 new)."""
    results = []
    for kind in ("memory", "file"):
        s: Store = MemoryStore() if kind == "memory" else CacheFile(None)
        s.reset("s", "fp")
        s.prepare("s", SHAPE)
        s.write("s", [RowWrite((i,), {"id": i, "v": f"r{i}", "n": None, "done": None,
                                      "meta": None}) for i in range(300)])
        m = Merger("public", "items", ("id",), view=s.view("s", _version),
                   compare_columns=SHAPE.column_names)
        m.gap()
        fetched = [{"id": i, "v": f"r{i}" if i >= 100 else "changed", "n": None,
                    "done": None, "meta": None} for i in range(50, 320)]
        out = []
        for start in range(0, len(fetched), 40):
            out += m.replay_rows(fetched[start:start + 40])
            s.write("s", m.take_writes())
        for part in m.replay_unmarked(chunk=7):
            out += part
            s.write("s", m.take_writes())
        out += m.finish()
        results.append(sorted((c.op, c.pk) for c in out))
        assert len(_rows(s, "s")) == 270
        s.close()
    assert results[0] == results[1]
    ops = [op for op, _ in results[0]]
    assert ops.count("UPDATE") == 50 and ops.count("DELETE") == 50 and ops.count("INSERT") == 20


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        (None, CacheFile),
        ("memory:", MemoryStore),
        (":memory:", MemoryStore),
    ],
)
def test_open_store(spec: str | None, kind: Callable[..., Store]) -> None:
    s = open_store(spec)
    assert isinstance(s, kind)  # type: ignore[arg-type]
    s.close()


def test_open_store_paths_and_urls() -> None:
    path = _file()
    for spec in (str(path), f"sqlite://{path}", path):
        s = open_store(spec)
        assert isinstance(s, CacheFile) and s.path == path
        s.close()
    with pytest.raises(ConfigError, match="unknown cache URL scheme"):
        open_store("redis://localhost/0")
    assert os.path.exists(path)


def test_exact_repair_key_chunks_fit_a_url() -> None:
    from supasync.repair.repairer import key_chunks

    ints = [(i,) for i in range(5000)]
    chunks = key_chunks(ints)
    assert [k for c in chunks for k in c] == ints
    assert all(len(c) <= 1000 for c in chunks)
    assert all(sum(len(str(k[0])) + 1 for k in c) <= 6000 for c in chunks)
    uuids = [(f"{i:08d}-0000-4000-8000-000000000000",) for i in range(400)]
    assert all(len(c) <= 6000 // 37 for c in key_chunks(uuids))
    assert key_chunks([]) == []


def test_a_quiet_merger_updates_the_view_without_building_changes() -> None:
    """A read model's repair (nothing consumes): the same writes and counts, no changes."""
    loud = Merger("public", "items", ("id",), rows=[CachedRow((1,), {"id": 1, "v": "a"})])
    quiet = Merger("public", "items", ("id",), rows=[CachedRow((1,), {"id": 1, "v": "a"})])
    quiet.quiet = True
    for m in (loud, quiet):
        m.gap()
    fetched = [{"id": 2, "v": "b"}]
    assert [c.op for c in loud.replay_rows(fetched)] == ["INSERT"]
    assert quiet.replay_rows(fetched) == []
    assert [c.op for part in loud.replay_unmarked() for c in part] == ["DELETE"]
    assert [c for part in quiet.replay_unmarked() for c in part] == []
    assert loud.take_writes() == quiet.take_writes()
    assert (loud.counts.inserted, loud.counts.deleted) == (quiet.counts.inserted,
                                                          quiet.counts.deleted) == (1, 1)


def test_a_file_made_by_the_durable_outbox_is_not_foreign() -> None:
    """A channel's durable outbox may create the cache file before the first cached
    subscription opens it: its ``_supasync_outbox`` table does not make the file foreign."""
    from supasync.store.outbox import DurableOutbox

    path = _file()
    outbox = DurableOutbox(path)
    s = CacheFile(path)
    s.reset("s", "fp")
    s.prepare("s", SHAPE)
    s.write("s", [RowWrite((1,), {"id": 1})])
    assert list(_rows(s, "s")) == [(1,)]
    s.close()
    outbox.close()


def test_a_temporary_file_numbers_its_changes_apart_from_earlier_ones() -> None:
    """A position kept from an earlier process's temporary cache (a browser's last event id)
    must not point into the new file's history: it gets must-refetch."""
    seqs = []
    for _ in range(2):
        s = CacheFile(None)
        s.reset("s", "fp")
        s.prepare("s", SHAPE)
        s.write("s", [RowWrite((1,), {"id": 1})])
        with StoreReader(s.path) as reader:
            seqs.append(reader.seq())
            if len(seqs) == 2:
                assert seqs[1] > seqs[0]
                assert reader.changes_since("items", seqs[0]).must_refetch
        s.close()


def test_a_row_written_again_unchanged_is_not_journaled() -> None:
    """A live change the repair already applied, written again: no journal entry (the relay
    and the browser streams follow the journal: they would get a change that changed
    nothing)."""
    path = _file()
    s = CacheFile(path)
    s.reset("s", "fp")
    s.prepare("s", SHAPE)
    s.write("s", [RowWrite((1,), {"id": 1, "v": "a"})])
    with StoreReader(path) as reader:
        seq = reader.seq()
        s.write("s", [RowWrite((1,), {"id": 1, "v": "a"})])
        assert not reader.changes_since("items", seq).entries
        s.write("s", [RowWrite((1,), {"id": 1, "v": "b"})])
        assert [e.op for e in reader.changes_since("items", seq).entries] == ["U"]
    s.close()
