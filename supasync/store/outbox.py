"""The durable broadcast outbox: messages a channel has not yet had acknowledged, on disk.

A client with a cache file (``Realtime(cache="app.db")``) keeps every broadcast it was asked to
send in the table ``_supasync_outbox`` of that same file until the server acknowledged it, so a
process that stops (or crashes) with messages waiting sends them when it next opens the channel,
in their original order and with their original ids (receivers drop copies by id).

The table is the outbox's alone; the cache's own tables are not touched. One row per message::

    _supasync_outbox(topic, private, seq, id, event, payload, created_at)

``seq`` orders the messages of one channel (``topic``, ``private``). Rows are written with a
connection of their own in autocommit mode (one insert per ``put``, one delete per ack): SQLite
serialises them with the cache's writers (WAL, ``busy_timeout``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import CacheError

__all__ = ["DurableOutbox", "StoredMessage", "outbox_path"]

_SCHEMA = """
create table if not exists _supasync_outbox (
    topic text not null,
    private integer not null,
    seq integer not null,
    id text not null,
    event text not null,
    payload text not null,
    created_at real not null,
    primary key (topic, private, seq)
)
"""


def outbox_path(cache: object) -> Path | None:
    """The file a client's durable outbox lives in, or None (memory / temporary cache).

    ``cache`` is what the client was given: a path or ``sqlite:`` URL (the file), ``None`` or
    ``"memory:"`` (no durable outbox: nothing outlives the process anyway), or a store object
    whose ``path`` attribute names a file it keeps (a temporary one does not count).
    """
    if cache is None:
        return None
    if isinstance(cache, str | os.PathLike):
        text = os.fspath(cache)
        if text in ("memory:", ":memory:", "memory://"):
            return None
        if text.startswith("sqlite:"):
            text = text[len("sqlite:"):]
            if text.startswith("//"):
                text = text[2:]
        return Path(text) if text and "://" not in text else None
    if getattr(cache, "temporary", False):
        return None
    path = getattr(cache, "path", None)
    return Path(path) if isinstance(path, str | os.PathLike) else None


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    id: str
    event: str
    payload: dict[str, Any]


class DurableOutbox:
    """The ``_supasync_outbox`` table of one file. Not thread-safe: one event loop uses it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("pragma busy_timeout = 30000")
            self._db.execute("pragma journal_mode=wal")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise CacheError(
                f"cannot open the broadcast outbox in {self.path}: {exc}; check the path and "
                "its permissions") from exc

    def load(self, topic: str, private: bool) -> Iterator[StoredMessage]:
        """The channel's waiting messages, oldest first."""
        rows = self._run(
            "select seq, id, event, payload from _supasync_outbox where topic = ? and "
            "private = ? order by seq", (topic, int(private))).fetchall()
        for seq, mid, event, payload in rows:
            yield StoredMessage(int(seq), str(mid), str(event), json.loads(payload))

    def add(self, topic: str, private: bool, seq: int, mid: str, event: str,
            payload: dict[str, Any]) -> None:
        self._run(
            "insert or replace into _supasync_outbox values (?, ?, ?, ?, ?, ?, ?)",
            (topic, int(private), seq, mid, event, json.dumps(payload, separators=(",", ":")),
             time.time()))

    def remove(self, topic: str, private: bool, seq: int) -> None:
        self._run("delete from _supasync_outbox where topic = ? and private = ? and seq = ?",
                  (topic, int(private), seq))

    def count(self) -> int:
        return int(self._run("select count(*) from _supasync_outbox", ()).fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def _run(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise CacheError(f"broadcast outbox in {self.path}: {exc}") from exc
