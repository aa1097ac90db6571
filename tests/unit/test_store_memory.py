"""A store file's writer keeps a bounded page cache: ``MirrorStore.CACHE_KIB``, whatever the
file's size, for a new file (16 KiB pages chosen at creation) as for a reopened one.

Measured with SQLite's own allocation counter (``sqlite3_memory_used()``), read through ctypes
from the library Python's ``sqlite3`` module uses; skipped where that library cannot be reached
(a statically linked SQLite) or keeps no count. Issue #17: a new file's cache was sized for
4 KiB pages and then held 16 KiB ones (about 8 MB instead of 2), which a long run filled a page
at a time as the journal grew.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from supasync.store.tables import MirrorStore, TableShape

BIG = TableShape("public", "big", (("id", "int8"), ("body", "text")), ("id",))
ROWS = 6000
BODY = "x" * 1000  # about 6 MB of rows: three times the cache's bound


def sqlite_memory_counter() -> Callable[[], int]:
    """``sqlite3_memory_used`` of the SQLite that ``sqlite3`` is linked to, or skip."""
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        pytest.skip("no shared SQLite library to read its memory counter from")
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        pytest.skip(f"cannot load {name}")
    lib.sqlite3_libversion.restype = ctypes.c_char_p
    if lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:
        pytest.skip("the shared SQLite is not the one the sqlite3 module uses")
    used: Callable[[], int] = lib.sqlite3_memory_used
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    # The same library instance: memory the sqlite3 module allocates shows in its counter.
    probe = sqlite3.connect(":memory:")
    before = used()
    probe.execute("create table t (x)")
    probe.executemany("insert into t values (?)", ((BODY,) for _ in range(500)))
    grew = used() - before
    probe.close()
    if grew < 100_000:
        pytest.skip("SQLite keeps no allocation count here (SQLITE_DEFAULT_MEMSTATUS=0)")
    return used


def fill_and_read(store: MirrorStore) -> None:
    """Write ~6 MB of rows, then read every page back through the writer's connection."""
    with store.transaction():
        store.upsert_rows(BIG, ({"id": i, "body": BODY} for i in range(ROWS)))
    total = store.db.execute("select sum(length(body)) from big").fetchone()[0]
    assert total == ROWS * len(BODY)


def test_a_new_files_writer_caches_at_most_cache_kib(tmp_path: Path) -> None:
    used = sqlite_memory_counter()
    store = MirrorStore(tmp_path / "new.sqlite")
    try:
        assert store.db.execute("pragma page_size").fetchone()[0] == MirrorStore.PAGE_SIZE
        store.ensure_table(BIG)
        before = used()
        fill_and_read(store)
        grown = used() - before
    finally:
        store.close()
    # The bound, plus room for statements and SQLite's per-page headers; without the fix the
    # cache held ~8 MB here.
    assert grown < MirrorStore.CACHE_KIB * 1024 * 1.5, f"page cache grew {grown} bytes"


def test_a_reopened_files_writer_caches_at_most_cache_kib(tmp_path: Path) -> None:
    used = sqlite_memory_counter()
    path = tmp_path / "old.sqlite"
    first = MirrorStore(path)
    first.ensure_table(BIG)
    first.close()
    store = MirrorStore(path)
    try:
        before = used()
        fill_and_read(store)
        grown = used() - before
    finally:
        store.close()
    assert grown < MirrorStore.CACHE_KIB * 1024 * 1.5, f"page cache grew {grown} bytes"


def test_a_first_snapshot_writes_with_the_snapshot_cache_then_returns_to_the_bound(
        tmp_path: Path) -> None:
    store = MirrorStore(tmp_path / "snap.sqlite")
    other = TableShape("public", "other", (("id", "int8"),), ("id",))
    try:
        store.ensure_table(BIG)
        store.ensure_table(other)

        def cache() -> int:
            return int(store.db.execute("pragma cache_size").fetchone()[0])

        assert cache() == -MirrorStore.CACHE_KIB
        store.begin_snapshot(BIG)
        store.begin_snapshot(other)
        assert cache() == -MirrorStore.SNAPSHOT_CACHE_KIB
        store.end_snapshot(BIG)
        assert cache() == -MirrorStore.SNAPSHOT_CACHE_KIB  # another snapshot is under way
        store.end_snapshot(other)
        assert cache() == -MirrorStore.CACHE_KIB
    finally:
        store.close()
