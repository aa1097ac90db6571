"""The SQLite :class:`~supasync.store.Store`, the embedded default.

File layout (all tables prefixed ``supasync_cache_`` so the file can sit next to other data):

* ``supasync_cache_info(key, value)``: ``format`` = :data:`FORMAT`; a file whose format
  differs is refused rather than misread.
* ``supasync_cache_subscriptions(name, fingerprint, cursor)``: cursor as JSON text.
* ``supasync_cache_rows(subscription, key, row, version)``: ``key`` is the primary key as
  compact JSON (``[1]``, ``["a", 2]``), ``row`` the row image as JSON text.
* ``supasync_cache_journal(subscription, seq, at, kind, detail)``.

Durability: WAL journal mode with ``synchronous=NORMAL`` - a committed batch survives a process
crash (what the kill-and-restart tests exercise); an OS crash may lose the last batches, which
the next repair reads again (writes are idempotent). Every :meth:`SqliteStore.write` is one
``BEGIN IMMEDIATE ... COMMIT``.

``SqliteStore(None)`` makes a temporary file in a fresh directory and deletes both on close.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.errors import CacheError
from ..core.merge import CachedRow, RowWrite
from .model import JOURNAL_LIMIT, CacheMeta, JournalEntry

__all__ = ["FORMAT", "SqliteStore"]

FORMAT = "1"

_SCHEMA = """
create table if not exists supasync_cache_info (key text primary key, value text not null);
create table if not exists supasync_cache_subscriptions (
  name text primary key,
  fingerprint text not null,
  cursor text
);
create table if not exists supasync_cache_rows (
  subscription text not null,
  key text not null,
  row text not null,
  version integer,
  primary key (subscription, key)
) without rowid;
create table if not exists supasync_cache_journal (
  subscription text not null,
  seq integer primary key autoincrement,
  at text not null,
  kind text not null,
  detail text not null
);
create index if not exists supasync_cache_journal_sub on supasync_cache_journal (subscription, seq);
"""


def _dump(value: Any) -> str:
    # Rows are JSON from PostgREST/Realtime; default=str keeps any odd value readable.
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def key_text(pk: Sequence[Any]) -> str:
    """The stored form of a primary key."""
    return json.dumps(list(pk), separators=(",", ":"), default=str)


class SqliteStore:
    """A cache in one SQLite file (see the module docstring).

    Args:
        path: the file (created if missing), or None for a temporary file.

    Raises:
        CacheError: the file cannot be opened, is not SQLite, or has another cache format.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self._tmpdir: str | None = None
        if path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="supasync-cache-")
            path = os.path.join(self._tmpdir, "cache.db")
            # A store never closed (its owner crashed or was dropped) still removes its
            # temporary directory when collected or at interpreter exit.
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("pragma journal_mode=wal")
            self._db.execute("pragma synchronous=normal")
            self._db.executescript(_SCHEMA)
            found = self._db.execute(
                "select value from supasync_cache_info where key = 'format'"
            ).fetchone()
            if found is None:
                self._db.execute("insert into supasync_cache_info values ('format', ?)", (FORMAT,))
            elif found[0] != FORMAT:
                raise CacheError(
                    f"cache file {self.path} has format {found[0]}, this supasync writes "
                    f"format {FORMAT}; delete the file (it is rebuilt by the next repair) or "
                    "use another path"
                )
        except sqlite3.Error as exc:
            raise CacheError(
                f"cannot open the cache file {self.path}: {exc}; check the path and its "
                "permissions, or delete the file if it is not a supasync cache"
            ) from exc

    @property
    def temporary(self) -> bool:
        """Whether the file is a temporary one, deleted on :meth:`close` (no restart resumes
        it)."""
        return self._tmpdir is not None

    @contextlib.contextmanager
    def _tx(self, what: str) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("begin immediate")
            try:
                yield self._db
            except BaseException:
                self._db.execute("rollback")
                raise
            self._db.execute("commit")
        except sqlite3.Error as exc:
            raise CacheError(
                f"cache file {self.path}: {what} failed: {exc}; check disk space and that no "
                "other process holds the file"
            ) from exc

    def meta(self, subscription: str) -> CacheMeta | None:
        row = self._db.execute(
            "select fingerprint, cursor from supasync_cache_subscriptions where name = ?",
            (subscription,),
        ).fetchone()
        if row is None:
            return None
        return CacheMeta(row[0], json.loads(row[1]) if row[1] is not None else None)

    def rows(self, subscription: str) -> list[CachedRow]:
        cur = self._db.execute(
            "select key, row, version from supasync_cache_rows where subscription = ?",
            (subscription,),
        )
        return [CachedRow(tuple(json.loads(k)), json.loads(r), v) for k, r, v in cur]

    def write(
        self,
        subscription: str,
        writes: Sequence[RowWrite],
        *,
        cursor: Mapping[str, Any] | None = None,
        journal: Sequence[JournalEntry] = (),
    ) -> None:
        with self._tx("writing a batch") as db:
            found = db.execute(
                "select 1 from supasync_cache_subscriptions where name = ?", (subscription,)
            ).fetchone()
            if found is None:
                raise CacheError(
                    f"subscription {subscription!r} is not in the cache {self.path}; call "
                    "reset() before write()"
                )
            upserts = [
                (subscription, key_text(w.pk), _dump(w.row), w.version)
                for w in writes
                if w.row is not None
            ]
            deletes = [(subscription, key_text(w.pk)) for w in writes if w.row is None]
            if deletes:
                db.executemany(
                    "delete from supasync_cache_rows where subscription = ? and key = ?", deletes
                )
            if upserts:
                db.executemany(
                    "insert into supasync_cache_rows values (?, ?, ?, ?) "
                    "on conflict (subscription, key) do update "
                    "set row = excluded.row, version = excluded.version",
                    upserts,
                )
            if cursor is not None:
                db.execute(
                    "update supasync_cache_subscriptions set cursor = ? where name = ?",
                    (_dump(cursor), subscription),
                )
            self._append(db, subscription, journal)

    def _append(
        self, db: sqlite3.Connection, subscription: str, journal: Sequence[JournalEntry]
    ) -> None:
        if not journal:
            return
        db.executemany(
            "insert into supasync_cache_journal (subscription, at, kind, detail) "
            "values (?, ?, ?, ?)",
            [(subscription, e.at.isoformat(), e.kind, _dump(dict(e.detail))) for e in journal],
        )
        db.execute(
            "delete from supasync_cache_journal where subscription = ? and seq not in "
            "(select seq from supasync_cache_journal where subscription = ? "
            "order by seq desc limit ?)",
            (subscription, subscription, JOURNAL_LIMIT),
        )

    def reset(self, subscription: str, fingerprint: str, *, reason: str = "new") -> None:
        with self._tx("resetting a subscription") as db:
            db.execute("delete from supasync_cache_rows where subscription = ?", (subscription,))
            db.execute(
                "insert into supasync_cache_subscriptions values (?, ?, null) "
                "on conflict (name) do update "
                "set fingerprint = excluded.fingerprint, cursor = null",
                (subscription, fingerprint),
            )
            self._append(db, subscription, [JournalEntry("reset", {"reason": reason})])

    def journal(self, subscription: str, limit: int = JOURNAL_LIMIT) -> list[JournalEntry]:
        cur = self._db.execute(
            "select at, kind, detail from (select * from supasync_cache_journal "
            "where subscription = ? order by seq desc limit ?) order by seq",
            (subscription, limit),
        )
        return [
            JournalEntry(kind, json.loads(detail), _dt.datetime.fromisoformat(at))
            for at, kind, detail in cur
        ]

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        if self._tmpdir is not None:
            self._cleanup()  # shutil.rmtree(tmpdir, ignore_errors=True), once
            self._tmpdir = None
