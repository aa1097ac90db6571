"""The cache stores (supasync.store): one contract, two implementations."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supasync.core.errors import CacheError, ConfigError
from supasync.core.merge import RowWrite
from supasync.store import JOURNAL_LIMIT, JournalEntry, Store, open_store
from supasync.store.memory import MemoryStore
from supasync.store.sqlite import SqliteStore


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SqliteStore(None)
    yield s
    s.close()


def test_rows_cursor_and_journal_round_trip(store: Store) -> None:
    assert store.meta("s") is None
    store.reset("s", "fp1")
    assert store.meta("s") is not None and store.meta("s").fingerprint == "fp1"  # type: ignore[union-attr]
    store.write(
        "s",
        [RowWrite((1,), {"id": 1, "v": "a"}, 5), RowWrite(("x", 2), {"k": "x", "n": 2}, None)],
        cursor={"mode": "exact", "horizon": "42"},
        journal=[JournalEntry("repair", {"mode": "exact", "inserted": 2})],
    )
    rows = {r.pk: (dict(r.row), r.version) for r in store.rows("s")}
    assert rows == {(1,): ({"id": 1, "v": "a"}, 5), ("x", 2): ({"k": "x", "n": 2}, None)}
    meta = store.meta("s")
    assert meta is not None and meta.cursor == {"mode": "exact", "horizon": "42"}
    store.write("s", [RowWrite((1,), None), RowWrite(("x", 2), {"k": "x", "n": 3}, 7)])
    assert [(r.pk, r.version) for r in store.rows("s")] == [(("x", 2), 7)]
    meta = store.meta("s")
    assert meta is not None and meta.cursor == {"mode": "exact", "horizon": "42"}  # unchanged
    assert [e.kind for e in store.journal("s")] == ["reset", "repair"]
    assert store.journal("s")[-1].detail == {"mode": "exact", "inserted": 2}


def test_subscriptions_are_separate_and_reset_forgets(store: Store) -> None:
    store.reset("a", "fa")
    store.reset("b", "fb")
    store.write("a", [RowWrite((1,), {"id": 1})], cursor={"c": 1})
    assert store.rows("b") == []
    store.reset("a", "fa2", reason="fingerprint changed")
    assert store.rows("a") == []
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
    return Path(tempfile.mkdtemp(prefix="supasync-test-cache-")) / "c.db"


def test_sqlite_file_resumes_where_it_stopped() -> None:
    path = _file()
    s = SqliteStore(path)
    s.reset("s", "fp")
    s.write("s", [RowWrite((1,), {"id": 1, "v": 1}, 3)], cursor={"horizon": "9"})
    s.close()
    s = SqliteStore(path)
    assert [(r.pk, dict(r.row), r.version) for r in s.rows("s")] == [((1,), {"id": 1, "v": 1}, 3)]
    meta = s.meta("s")
    assert meta is not None and meta.cursor == {"horizon": "9"} and meta.fingerprint == "fp"
    s.close()


def test_sqlite_batch_is_atomic() -> None:
    """A failure mid-batch leaves neither the rows nor the cursor."""
    path = _file()
    s = SqliteStore(path)
    s.reset("s", "fp")
    s.write("s", [RowWrite((1,), {"id": 1})], cursor={"c": 1})
    bad = RowWrite((2,), {"id": 2})
    poison = RowWrite((3,), {"id": 3}, "not-an-int")  # type: ignore[arg-type]
    # Make the upsert fail on the poisoned row through a CHECK-like trigger.
    s._db.execute(
        "create trigger poison before insert on supasync_cache_rows "
        "when new.version = 'not-an-int' begin select raise(abort, 'poisoned'); end"
    )
    with pytest.raises(CacheError, match="poisoned"):
        s.write("s", [bad, poison], cursor={"c": 2})
    assert [r.pk for r in s.rows("s")] == [(1,)]
    meta = s.meta("s")
    assert meta is not None and meta.cursor == {"c": 1}
    s.close()


def test_sqlite_temporary_file_is_removed() -> None:
    s = SqliteStore(None)
    path = s.path
    assert path.exists()
    s.close()
    assert not path.exists()


def test_sqlite_refuses_other_files() -> None:
    path = _file()
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(CacheError, match="cannot open the cache file"):
        SqliteStore(path)
    other = _file()
    with sqlite3.connect(other) as db:
        db.execute("create table supasync_cache_info (key text primary key, value text)")
        db.execute("insert into supasync_cache_info values ('format', '99')")
    with pytest.raises(CacheError, match="format 99"):
        SqliteStore(other)


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        (None, SqliteStore),
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
        assert isinstance(s, SqliteStore) and s.path == path
        s.close()
    with pytest.raises(ConfigError, match="unknown cache URL scheme"):
        open_store("redis://localhost/0")
    assert os.path.exists(path)
