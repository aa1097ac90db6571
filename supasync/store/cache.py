"""The cache file: a subscription's rows in a typed table of a store file, the embedded default.

A cache file *is* a mirror file (:mod:`supasync.store.tables`): one SQLite file, WAL, one typed
table per cached subscription (same column names, SQLite types and primary key as the source),
every row change numbered in the change journal (:mod:`supasync.store.journal`), and supasync's
bookkeeping in ``_supasync_*`` tables. What this module adds is the cache's side of it, the
:class:`~supasync.store.model.Store` contract for :class:`~supasync.client.gate.CachedGate`:

* **Table names** (:func:`local_table_name`): the mirror's (``todos``; ``schema_table`` outside
  ``public``) for a subscription named after its table (the default name ``public.todos``, or
  ``todos``);
  a subscription with another name gets its own table, ``todos__open`` for one named ``open``.
  The name is recorded per subscription, so renaming the rule later never orphans a file.
* **Per subscription** in ``_supasync_state``: the fingerprint (``fingerprint:<name>``), the
  repair cursor (``cursor:<name>``) and the table (``table:<name>``); a short log of repairs
  and resets in ``_supasync_log`` (:meth:`CacheFile.journal`, trimmed to
  :data:`~supasync.store.model.JOURNAL_LIMIT` lines per subscription).
* **Writes** (:meth:`CacheFile.write`): rows, cursor and log lines in one transaction; each
  row's origin and commit time go to the change journal. A first snapshot into an empty table
  is one journal reset entry, not one entry per row (:meth:`CacheFile.begin_snapshot`).
* **Opening reads nothing proportional to a table**: the merger's view
  (:meth:`CacheFile.view`, a :class:`~supasync.store.view.StoredView`) reads rows by key.

Durability: WAL with ``synchronous=NORMAL`` - a committed batch survives a process crash (what
the kill-and-restart tests exercise); an OS crash may lose the last batches, which the next
repair reads again (writes are idempotent).

``CacheFile(None)`` makes a temporary file in a fresh directory; :meth:`CacheFile.close`
deletes the directory (and a garbage-collected or never-closed store at interpreter exit).
A file written by supasync's first cache format (JSON rows, ``supasync_cache_*`` tables) is a
cache of re-fetchable rows: it is replaced, with a warning, by a new file.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.errors import CacheError, RestError
from ..core.merge import CachedRow, RowWrite
from .journal import DEFAULT_KEEP, DEFAULT_MAX_AGE, Origin
from .model import JOURNAL_LIMIT, CacheMeta, JournalEntry
from .tables import MirrorStore, PageWrite, SchemaAction, TableShape, mirror_table_name
from .view import StoredView

__all__ = ["CacheFile", "local_table_name"]

logger = logging.getLogger("supasync.store")

_ORIGINS: frozenset[str] = frozenset({"live", "replay", "snapshot"})


def local_table_name(subscription: str, schema: str, table: str) -> str:
    """The table a cached subscription's rows live in (see the module docstring).

    >>> local_table_name("public.todos", "public", "todos")
    'todos'
    >>> local_table_name("open", "public", "todos")
    'todos__open'
    >>> local_table_name("public.todos#2", "public", "todos")
    'todos__2'
    """
    base = mirror_table_name(schema, table)
    default = f"{schema}.{table}"
    if subscription in (default, table, base):
        return base
    suffix = subscription[len(default) + 1:] if subscription.startswith(default + "#") \
        else subscription
    suffix = re.sub(r"[^0-9A-Za-z_]+", "_", suffix).strip("_") or "sub"
    return f"{base}__{suffix}"


def _dump(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _is_first_format(path: Path) -> bool:
    """Whether *path* is a cache file of supasync's first format (JSON rows)."""
    if not path.is_file():
        return False
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = db.execute("select 1 from sqlite_master where type = 'table' and"
                               " name = 'supasync_cache_info'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return found is not None


class CacheFile:
    """A cache in one store file (see the module docstring).

    Args:
        path: the file (created if missing, resumed if it exists), or None for a temporary one.
        journal_keep, journal_max_age: the change journal's retention (count, seconds).

    Raises:
        CacheError: the file cannot be opened or written, is not SQLite, is an SQLite file
            supasync did not create, or another process is writing it.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *,
                 journal_keep: int = DEFAULT_KEEP,
                 journal_max_age: float | None = DEFAULT_MAX_AGE,
                 tables: MirrorStore | None = None) -> None:
        self._tmpdir: str | None = None
        self._owns_tables = tables is None
        if tables is not None:
            # A store file already open (the mirror worker's: it holds the writer's lock and
            # its checks were made): the cache's side of it, sharing its connection.
            self.tables, self.path, self.db = tables, tables.path, tables.db
            self._init_log()
            return
        if path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="supasync-cache-")
            path = os.path.join(self._tmpdir, "cache.sqlite")
            # A store never closed (its owner crashed or was dropped) still removes its
            # temporary directory when collected or at interpreter exit.
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
        self.path = Path(path)
        if _is_first_format(self.path):
            logger.warning("%s is a cache file of an older supasync format (JSON rows); "
                           "replacing it with a new one (its rows are read again)", self.path)
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
        if self._tmpdir is None and not self.path.parent.exists():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheError(f"cannot create the directory of the cache file {self.path}: "
                                 f"{exc.strerror}; choose another path") from exc
        try:
            self.tables = MirrorStore(self.path, journal_keep=journal_keep,
                                      journal_max_age=journal_max_age, option="cache=/--cache")
        except CacheError as exc:
            self._remove_temporary()
            raise CacheError(f"cannot open the cache file {self.path}: {exc}") from exc
        self.db = self.tables.db
        if self._tmpdir is not None:
            try:
                with self.tables.transaction():
                    # A temporary file is new in every process: its journal positions start
                    # at the current time in microseconds (below 2**53), so a position a
                    # reader kept from an earlier process's file never points into this one.
                    self.tables.journal.start_at(time.time_ns() // 1000)
            except sqlite3.Error as exc:
                self.close()
                raise CacheError(f"cannot write the cache file {self.path}: {exc}") from exc
        self._init_log()

    @classmethod
    def over(cls, tables: MirrorStore) -> CacheFile:
        """The cache's side of a store file already open (*tables* stays its owner's: closing
        the cache leaves it open)."""
        return cls(None, tables=tables)

    def _init_log(self) -> None:
        try:
            with self.tables.transaction():
                self.db.execute(
                    "create table if not exists _supasync_log (seq integer primary key"
                    " autoincrement, subscription text not null, at text not null,"
                    " kind text not null, detail text not null)")
                self.db.execute("create index if not exists _supasync_log_sub"
                                " on _supasync_log (subscription, seq)")
        except sqlite3.Error as exc:
            if self._owns_tables:
                self.close()
            raise CacheError(f"cannot write the cache file {self.path}: {exc}") from exc

    @property
    def temporary(self) -> bool:
        """Whether the file is a temporary one, deleted on :meth:`close` (no restart resumes
        it)."""
        return self._tmpdir is not None

    def _tx(self, what: str) -> Any:
        return _Guarded(self, what)

    # -- bookkeeping -----------------------------------------------------------------------
    def _state(self, kind: str, subscription: str) -> str | None:
        return self.tables.get_state(f"{kind}:{subscription}")

    def _cursor_keys(self, subscription: str) -> list[str]:
        """Where the subscription's cursor is kept: under its table's name, as a mirror file
        keeps it (``cursor:todos``), and - files of an earlier version - under its own."""
        name = self.table_name(subscription)
        keys = [f"cursor:{name}"] if name is not None else []
        return [*keys, f"cursor:{subscription}"]

    def meta(self, subscription: str) -> CacheMeta | None:
        fingerprint = self._state("fingerprint", subscription)
        if fingerprint is None:
            return None
        cursor = None
        for key in self._cursor_keys(subscription):
            text = self.tables.get_state(key)
            if text is not None:
                cursor = json.loads(text)
                break
        return CacheMeta(fingerprint, cursor if isinstance(cursor, dict) else None)

    def _forget_cursor(self, subscription: str) -> None:
        for key in self._cursor_keys(subscription):
            self.db.execute("delete from _supasync_state where key = ?", (key,))
        name = self.table_name(subscription)
        if name is not None:
            self.db.execute("update _supasync_tables set snapshot_complete = 0 where name = ?",
                            (name,))

    def _set_cursor(self, subscription: str, cursor: Mapping[str, Any]) -> None:
        """The cursor, and the table's snapshot flag (a cursor is written at the end of a
        complete read: readers of the file, the relay and ``supasync serve``, wait for it)."""
        key = self._cursor_keys(subscription)[0]
        self.tables.set_state(key, _dump(dict(cursor)))
        name = self.table_name(subscription)
        if name is not None:
            self.db.execute("update _supasync_tables set snapshot_complete = 1 where name = ?",
                            (name,))

    def table_name(self, subscription: str) -> str | None:
        """The local table of *subscription* (None before :meth:`prepare`)."""
        return self._state("table", subscription)

    def shape(self, subscription: str) -> TableShape | None:
        name = self.table_name(subscription)
        return None if name is None else self.tables.shape_named(name)

    def reset(self, subscription: str, fingerprint: str, *, reason: str = "new") -> None:
        """Forget the subscription's rows and cursor and record *fingerprint*."""
        with self._tx("resetting a subscription"):
            shape = self.shape(subscription)
            if shape is not None:
                self._empty(shape)
            self.tables.set_state(f"fingerprint:{subscription}", fingerprint)
            self._forget_cursor(subscription)
            self._append(subscription, [JournalEntry("reset", {"reason": reason})])

    def _empty(self, shape: TableShape) -> None:
        # One reset entry tells journal readers to read again, instead of a delete per row.
        journal = self.tables.journal
        journal.drop_triggers(shape.name)
        self.db.execute(f"delete from {_q(shape.name)}")
        journal.install_triggers(shape.name, shape.primary_key)
        journal.reset(shape.name, "replay")

    def prepare(self, subscription: str, shape: TableShape) -> SchemaAction:
        """Create or adapt the subscription's table for *shape* (same rules as the mirror:
        columns added or dropped in place, a changed type or key empties the table and clears
        the cursor so the next repair reads everything). Returns what was done."""
        try:
            self.tables.check_table(shape)
            action = self.tables.ensure_table(shape)
            with self._tx("recording a subscription's table"):
                self.tables.set_state(f"table:{subscription}", shape.name)
                if action == "resnapshot":
                    self._forget_cursor(subscription)
                    self._append(subscription, [JournalEntry("reset", {
                        "reason": "the table's column types or key changed upstream"})])
        except sqlite3.Error as exc:
            raise CacheError(f"cache file {self.path}: preparing the table {shape.name!r} "
                             f"failed: {exc}") from exc
        return action

    def view(self, subscription: str,
             version_of: Callable[[Mapping[str, Any]], int | None]) -> StoredView:
        """The merger's view of the subscription's rows (after :meth:`prepare`)."""
        shape = self.shape(subscription)
        if shape is None:
            raise CacheError(f"subscription {subscription!r} has no table in {self.path}; "
                             "call prepare() first")
        return StoredView(self.db, shape, version_of)

    def rows(self, subscription: str) -> list[CachedRow]:
        """Every cached row of the subscription, as PostgREST renders values (tests and
        tools; the merger reads by key, readers use :class:`~supasync.store.reads.StoreReader`)."""
        if self.shape(subscription) is None:
            return []
        return list(self.view(subscription, lambda row: None).rows())

    # -- writing ---------------------------------------------------------------------------
    def begin_snapshot(self, subscription: str) -> None:
        """A first read into the subscription's empty table starts: one journal reset entry,
        no entry per row, until :meth:`end_snapshot` (see
        :meth:`~supasync.store.tables.MirrorStore.begin_snapshot`)."""
        shape = self.shape(subscription)
        if shape is not None:
            with self._tx("starting a snapshot"):
                self.tables.begin_snapshot(shape)

    def end_snapshot(self, subscription: str) -> None:
        shape = self.shape(subscription)
        if shape is not None:
            with self._tx("ending a snapshot"):
                self.tables.end_snapshot(shape)

    def write(
        self,
        subscription: str,
        writes: Sequence[RowWrite],
        *,
        cursor: Mapping[str, Any] | None = None,
        journal: Sequence[JournalEntry] = (),
    ) -> None:
        """Apply *writes* (``row=None`` deletes), set *cursor* if given and append *journal*
        lines, in one transaction; each row is journaled with its origin and commit time."""
        with self._tx("writing a batch"):
            if self._state("fingerprint", subscription) is None:
                raise CacheError(f"subscription {subscription!r} is not in the cache "
                                 f"{self.path}; call reset() before write()")
            if writes:
                shape = self.shape(subscription)
                if shape is None:
                    raise CacheError(f"subscription {subscription!r} has no table in "
                                     f"{self.path}; call prepare() before writing rows")
                self._write_rows(shape, writes)
            if cursor is not None:
                self._set_cursor(subscription, cursor)
            self._append(subscription, journal)

    def write_page(self, subscription: str, body: bytes, expected: int | None = None, *,
                   column: str | None = None) -> PageWrite:
        """Write a first snapshot's page into the subscription's (empty) table, undecoded
        (the mirror's fast path: :meth:`~supasync.store.tables.MirrorStore.write_page`), in one
        transaction; returns what it did (rows held, rows written, *column*'s values as sent).

        Raises:
            CacheError: the table is missing, or SQLite failed.
            RestError: the body is not a JSON array of rows, or holds another number of rows
                than *expected* (PostgREST's ``Content-Range``); nothing of it is kept.
        """
        shape = self._require_shape(subscription)
        with self._tx("writing a snapshot page"):
            try:
                done = self.tables.write_page(shape, body, merge=False, column=column)
            except ValueError as exc:
                raise _not_rows(shape, exc) from exc
            _check_count(shape, done.rows, expected)
            return done

    def merge_page(self, subscription: str, body: bytes, *, first: bool,
                   expected: int | None = None, column: str | None = None) -> PageWrite:
        """Merge a full comparison's page into the subscription's table, undecoded, marking
        its keys (the mirror's path: rows that differ are rewritten and journaled as replayed,
        identical ones untouched); *first* starts the marks. Returns and raises as
        :meth:`write_page`."""
        shape = self._require_shape(subscription)
        if first:
            with self._tx("starting a comparison"):
                self.tables.begin_sweep(shape)
        with self._tx("merging a page"):
            try:
                done = self.tables.write_page(shape, body, merge=True, mark=True, column=column)
            except ValueError as exc:
                raise _not_rows(shape, exc) from exc
            _check_count(shape, done.rows, expected)
            return done

    def sweep(self, subscription: str) -> int:
        """After :meth:`merge_page` of every page: delete the rows no page held (journaled as
        replayed deletes); returns how many."""
        shape = self._require_shape(subscription)
        with self._tx("sweeping deleted rows"):
            return self.tables.sweep(shape)

    def count(self, subscription: str) -> int:
        shape = self._require_shape(subscription)
        return self.tables.count(shape)

    def _require_shape(self, subscription: str) -> TableShape:
        shape = self.shape(subscription)
        if shape is None:
            raise CacheError(f"subscription {subscription!r} has no table in {self.path}; "
                             "call prepare() before writing rows")
        return shape

    def _write_rows(self, shape: TableShape, writes: Sequence[RowWrite]) -> None:
        put = self.tables._statement("put", shape)
        delete = self.tables._statement("delete", shape)
        context = self.tables.journal.context
        # Consecutive writes of one origin and commit time share a statement run.
        run: list[tuple[Any, ...]] = []
        run_sql = ""
        run_ctx: tuple[Origin, str | None] | None = None

        def flush() -> None:
            if run:
                assert run_ctx is not None
                context(*run_ctx)
                self.db.executemany(run_sql, run)
                run.clear()

        for w in writes:
            origin: Origin = w.origin if w.origin in _ORIGINS else "live"  # type: ignore[assignment]
            ctx = (origin, w.committed)
            sql = delete if w.row is None else put
            if ctx != run_ctx or sql != run_sql:
                flush()
                run_ctx, run_sql = ctx, sql
            run.append(shape.key_values(w.pk) if w.row is None else shape.row_values(w.row))
        flush()

    def _append(self, subscription: str, journal: Sequence[JournalEntry]) -> None:
        if not journal:
            return
        self.db.executemany(
            "insert into _supasync_log (subscription, at, kind, detail) values (?, ?, ?, ?)",
            [(subscription, e.at.isoformat(), e.kind, _dump(dict(e.detail))) for e in journal])
        self.db.execute(
            "delete from _supasync_log where subscription = ? and seq not in (select seq from"
            " _supasync_log where subscription = ? order by seq desc limit ?)",
            (subscription, subscription, JOURNAL_LIMIT))

    def journal(self, subscription: str, limit: int = JOURNAL_LIMIT) -> list[JournalEntry]:
        """The subscription's last *limit* log lines (repairs, resets), oldest first."""
        cur = self.db.execute(
            "select at, kind, detail from (select * from _supasync_log where subscription = ?"
            " order by seq desc limit ?) order by seq", (subscription, limit))
        return [JournalEntry(kind, json.loads(detail), _dt.datetime.fromisoformat(at))
                for at, kind, detail in cur]

    # -- closing ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the file (a temporary one is deleted). Idempotent."""
        try:
            tables = self.tables
        except AttributeError:
            tables = None
        if tables is not None and self._owns_tables:
            try:
                tables.close()
            except sqlite3.Error:
                pass
        self._remove_temporary()

    def _remove_temporary(self) -> None:
        if self._tmpdir is not None:
            self._cleanup()  # shutil.rmtree(tmpdir, ignore_errors=True), once
            self._tmpdir = None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _not_rows(shape: TableShape, exc: ValueError) -> RestError:
    return RestError(f"PostgREST answered a read of {shape.schema}.{shape.table} with something "
                     f"that is not a list of rows: {exc}")


def _check_count(shape: TableShape, rows: int, expected: int | None) -> None:
    """Inside the page's transaction: a page holding another number of rows than PostgREST's
    ``Content-Range`` says is refused (rolled back), not half-trusted."""
    if expected is not None and rows != expected:
        raise RestError(f"PostgREST's Content-Range says {expected} rows of "
                        f"{shape.schema}.{shape.table} but the answer holds {rows}")


class _Guarded:
    """One transaction of the cache file; SQLite errors become a CacheError saying what
    failed and what to check."""

    def __init__(self, cache: CacheFile, what: str) -> None:
        self.cache, self.what = cache, what
        self.tx = cache.tables.transaction()

    def __enter__(self) -> sqlite3.Connection:
        try:
            return self.tx.__enter__()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.tx.__exit__(exc_type, exc, tb)
        except sqlite3.Error as again:
            raise self._error(again) from again
        if isinstance(exc, sqlite3.Error):
            raise self._error(exc) from exc

    def _error(self, exc: sqlite3.Error) -> CacheError:
        return CacheError(f"cache file {self.cache.path}: {self.what} failed: {exc}; check "
                          "disk space and that no other process holds the file")
