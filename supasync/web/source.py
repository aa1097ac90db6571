"""Where a stream's rows and changes come from: the :class:`Source` protocol, its store-file
implementation :class:`StoreSource`, and the :class:`Hub` that shares one read of every new
change among all the streams of a source.

Contract of a :class:`Source` (its methods block: the endpoint calls them in worker threads):

* :meth:`Source.read` - the rows passing a filter and the journal ``seq`` they reflect, read in
  one transaction: following :meth:`Source.changes` from that ``seq`` misses nothing and
  repeats nothing (the hand-off of ``/rows`` then ``/changes``).
* :meth:`Source.changes` - the changes after a position as :class:`~supasync.web.events.LiveEvent`
  (with the row as it is now for inserts and updates), or ``must_refetch`` when the position is
  older than the journal keeps or a reset (a first snapshot, a re-snapshot) lies after it.
* :meth:`Source.seq` - the newest sequence number, cheap (one indexed row): the hub polls it.

**Waiting for new changes: polling ``seq``** (the documented choice). A store file may be
written by this process (``supasync serve`` runs the mirror worker in-process) or by another
one (``supasync mirror`` beside a web server), and SQLite tells a reader nothing when another
connection commits. So one task per source (the :class:`Hub`, not one per stream) reads
``seq`` every ``poll_interval`` seconds (default 0.02: about 50 reads of one row a second, a
few microseconds each). A writer in the same process wakes it at once: a store file's commits
are announced in-process (:mod:`supasync.store.commits`), and the hub of a :class:`StoreSource`
listens for its file's, so with ``supasync serve`` a change reaches the streams without waiting
for the next poll (any writer may also call :meth:`Hub.poke`). When ``seq`` moved, the hub
reads the new changes once, keeps the latest ones in a ring shared by every stream, and wakes
the streams; a stream that is further behind than the ring
(resuming after a while, or slow) reads the journal itself, in its own worker thread, at its
own pace.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..core.errors import CacheError
from ..core.filters import Filter
from ..store.journal import JournalRead
from ..store.reads import StoreReader
from .events import OPS, LiveEvent

if TYPE_CHECKING:
    from ..client.subscription import Subscription

__all__ = ["Batch", "Hub", "Rows", "Source", "StoreSource", "SubscriptionSource",
           "new_store_file", "to_batch"]

logger = logging.getLogger("supasync.web")


@dataclass(frozen=True, slots=True)
class Rows:
    """Rows and the journal position they reflect, and the table's primary key columns (the
    ``key`` of the change events is their values)."""

    rows: list[dict[str, Any]]
    seq: int
    primary_key: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Batch:
    """Changes after a position: ``events`` in ``seq`` order, ``seq`` the position to continue
    from once they are handled; ``must_refetch`` (with a ``reason``) when the rows must be read
    again instead."""

    events: tuple[LiveEvent, ...]
    seq: int
    must_refetch: bool = False
    reason: str = ""


class Source(Protocol):
    """Rows and changes of one table (see the module docstring). Methods may block."""

    @property
    def table(self) -> str: ...

    def read(self, where: Filter | None, *, order_by: str | None = None,
             limit: int | None = None) -> Rows: ...

    def changes(self, seq: int, *, limit: int) -> Batch: ...

    def seq(self) -> int: ...


class StoreSource:
    """A table of a supasync store file (a mirror file, or any file with the change journal),
    read through :class:`~supasync.store.reads.StoreReader` from any thread.

    The file and the table may not exist yet, or the table's first snapshot not be complete
    (the mirror worker is still starting): :meth:`read` then raises
    :class:`~supasync.core.errors.CacheError`, and :meth:`seq` returns 0 until the file exists.
    """

    def __init__(self, path: str | Path, table: str) -> None:
        self.path = Path(path)
        self._table = table
        self._reader: StoreReader | None = None
        self._ready = False
        # Calls in flight, so close() never closes a connection under a reading thread
        # (closing an SQLite connection that another thread is using can crash the process).
        self._calls = 0
        self._closed = False
        self._idle = threading.Condition()

    @contextlib.contextmanager
    def _call(self) -> Iterator[StoreReader]:
        with self._idle:
            if self._closed:
                raise CacheError(f"the source {self._table!r} is closed")
            self._calls += 1
        try:
            yield self._store()
        finally:
            with self._idle:
                self._calls -= 1
                self._idle.notify_all()

    @property
    def table(self) -> str:
        return self._table

    def _store(self) -> StoreReader:
        if self._reader is None:
            self._reader = StoreReader(self.path)  # CacheError while the file is missing
        return self._reader

    def close(self) -> None:
        """Close the connections once no call is in flight (blocks until then: from a coroutine,
        ``await asyncio.to_thread(source.close)``). Later calls raise CacheError."""
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: self._calls == 0)
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _check_ready(self) -> None:
        """Raise CacheError until the table's first snapshot is complete (before, its rows are
        a part of the table). Read from the file's own table list, so it holds for a file
        written by another process too; once complete, it is not asked again."""
        if self._ready:
            return
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
                row = db.execute("select snapshot_complete from _supasync_tables where name = ?",
                                 (self._table,)).fetchone()
        except sqlite3.Error as exc:
            raise CacheError(f"cannot read {self.path}: {exc}") from exc
        if row is None or not row[0]:
            raise CacheError(f"{self.path} has no complete snapshot of {self._table!r} yet")
        self._ready = True

    def read(self, where: Filter | None, *, order_by: str | None = None,
             limit: int | None = None) -> Rows:
        with self._call() as store:
            self._check_ready()
            got = store.read(self._table, where, order_by=order_by, limit=limit)
            return Rows(got.rows, got.seq, store.view(self._table).primary_key)

    def seq(self) -> int:
        try:
            with self._call() as store:
                return store.seq()
        except CacheError:
            return 0

    def changes(self, seq: int, *, limit: int) -> Batch:
        with self._call() as store:
            return self._changes(store, seq, limit)

    def _changes(self, store: StoreReader, seq: int, limit: int) -> Batch:
        got = store.changes_since(self._table, seq, limit=limit)
        return to_batch(got, self._table, seq, lambda pk: store.get(self._table, pk),
                        lambda: store.view(self._table).primary_key)


def to_batch(got: JournalRead, table: str, seq: int,
             get: Callable[[Sequence[Any]], dict[str, Any] | None],
             key_columns: Callable[[], Sequence[str]]) -> Batch:
    """Journal entries as events: the row of each insert and update read now with *get*
    (module docstring of :mod:`supasync.web.events`), each event encoded once."""
    if got.must_refetch:
        reason = (f"position {seq} is older than the changes the store keeps, or the "
                  "table was loaded again (a snapshot) since")
        return Batch((), got.seq, True, reason)
    events: list[LiveEvent] = []
    columns: Sequence[str] | None = None
    for e in got.entries:
        op = OPS.get(e.op)
        if op is None:
            continue
        pk = tuple(e.pk or ())
        record: dict[str, Any] | None = None
        if op != "delete":
            record = get(pk)
            if record is None:
                continue  # deleted since: that delete is a later entry
            if columns is None:
                columns = key_columns()
            pk = tuple(record[c] for c in columns)  # decoded, as the row shows it
        # Encoded here, in the reading thread, once for every stream that sends it.
        events.append(LiveEvent(e.seq, table, op, pk, record, e.origin,
                                e.commit_timestamp).encoded())
    return Batch(tuple(events), got.seq)


class SubscriptionSource:
    """The rows a :class:`~supasync.client.realtime.Realtime` subscription keeps in the
    client's store file (its read model: ``sub.read``, ``sub.changes_since``, ``sub.get``),
    for a backend that already runs the client: ``LiveEndpoint({"todos":
    SubscriptionSource(sub)})``. The subscription must keep rows (gap repair on, the default)
    in a store file (``Realtime(cache=path)`` or the default temporary file; an in-memory
    cache keeps no journal).

    Before the subscription's first sync, reads return what is there so far; the first
    snapshot's reset then sends ``must-refetch`` to every stream positioned before it.
    """

    def __init__(self, subscription: Subscription, name: str | None = None) -> None:
        self.sub = subscription
        self._table = name or subscription.name

    @property
    def table(self) -> str:
        return self._table

    def read(self, where: Filter | None, *, order_by: str | None = None,
             limit: int | None = None) -> Rows:
        got = self.sub.read(where, order_by=order_by, limit=limit)
        return Rows(got.rows, got.seq, tuple(self.sub.primary_key))

    def seq(self) -> int:
        return self.sub.seq

    def changes(self, seq: int, *, limit: int) -> Batch:
        got = self.sub.changes_since(seq, limit=limit)
        return to_batch(got, self._table, seq, lambda pk: self.sub.get(*pk),
                        lambda: tuple(self.sub.primary_key))


def new_store_file(path: Path) -> None:
    """Create a store file whose journal positions cannot be mistaken for another file's.

    A browser keeps its last event id across server restarts; a file created anew (a
    temporary one, a user's mirror after its time to live) would otherwise number its changes
    from 1 again, and an old id could silently point into the new file's history. So a new
    file's sequence starts at the current time in microseconds (below 2**53: exact in
    JavaScript too), and everything before it counts as pruned: an id from an older file is
    below it (``must-refetch``), one from a newer file above the newest (refused). SQLite
    documents that ``sqlite_sequence`` may be written (https://sqlite.org/autoinc.html); the
    floor is the journal's own record of pruned positions (supasync/store/journal.py)."""
    from ..store.tables import MirrorStore

    store = MirrorStore(path)
    try:
        start = time.time_ns() // 1000
        with store.transaction():
            db = store.db
            db.execute("delete from sqlite_sequence where name = '_supasync_journal'")
            db.execute("insert into sqlite_sequence (name, seq) values ('_supasync_journal', ?)",
                       (start,))
            db.execute("insert into _supasync_state values ('journal_floor', ?) on conflict(key)"
                       " do update set value = excluded.value", (str(start),))
    finally:
        store.close()


class Hub:
    """One source's shared follower (see the module docstring): polls ``seq``, reads each new
    change once, keeps the latest *ring* events (and about *ring_bytes* of them at most), and
    wakes the streams waiting on it.

    Positions: every event with ``covered < seq <= hub.seq`` is in the ring, so a stream at
    position ``p >= covered`` takes its next events from memory; one at ``p < covered`` reads
    the source itself (:meth:`after` returns None).
    """

    def __init__(self, source: Source, *, poll_interval: float = 0.02, ring: int = 10_000,
                 ring_bytes: int = 16 << 20, read_limit: int = 2_000) -> None:
        self.source = source
        self.poll_interval = poll_interval
        self.read_limit = read_limit
        self.ring_bytes = ring_bytes
        self._bytes = 0
        self.seq = 0
        self.covered = 0
        self.ring = ring
        self._ring: list[LiveEvent] = []
        self._seqs: list[int] = []
        self._advanced = asyncio.Event()
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._closing = False
        self.failure: str | None = None

    async def start(self) -> None:
        """Start following (idempotent); returns once the starting position is known."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"supasync-web-hub-{id(self)}")
        await self._started.wait()

    async def close(self) -> None:
        """Stop following. Waits for a read in flight to end (a worker thread cannot be
        cancelled; the source may be closed right after this returns)."""
        self._closing = True
        self._poked.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._advanced.set()

    def poke(self) -> None:
        """A writer in this process committed: look now instead of at the next poll."""
        self._poked.set()

    async def _run(self) -> None:
        path = getattr(self.source, "path", None)
        unwatch: Callable[[], None] | None = None
        if isinstance(path, Path):
            # A writer of the file in this process (``supasync serve``'s mirror) wakes the hub
            # at each commit (supasync.store.commits): no poll interval on the latency path.
            # Polling goes on, for writers in other processes.
            from ..store.commits import watch

            loop = asyncio.get_running_loop()
            poked = self._poked

            def woken() -> None:
                with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                    loop.call_soon_threadsafe(poked.set)

            unwatch = watch(path, woken)
        try:
            await self._follow()
        finally:
            if unwatch is not None:
                unwatch()

    async def _follow(self) -> None:
        first = await asyncio.to_thread(self.source.seq)
        self.seq = self.covered = first
        self._started.set()
        while not self._closing:
            # Cleared before reading: a commit noticed while reading is read at once after.
            self._poked.clear()
            try:
                newest = await asyncio.to_thread(self.source.seq)
                while newest > self.seq and not self._closing:
                    before = self.seq
                    batch = await asyncio.to_thread(self.source.changes, self.seq,
                                                    limit=self.read_limit)
                    self._publish(batch)
                    if self.seq <= before:
                        break
                self.failure = None
            except CacheError as exc:  # the file or table is not there yet / any more
                self.failure = str(exc)
            except Exception as exc:  # a damaged file: keep trying, streams keep waiting
                if self.failure != str(exc):
                    logger.warning("supasync.web: reading %s failed: %s", self.source.table, exc)
                self.failure = str(exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._poked.wait()

    def _publish(self, batch: Batch) -> None:
        if batch.must_refetch:
            # Everything before is void: streams positioned earlier read the source, which
            # tells them to refetch.
            self._ring.clear()
            self._seqs.clear()
            self._bytes = 0
            self.covered = batch.seq
        else:
            self._ring.extend(batch.events)
            self._seqs.extend(ev.seq for ev in batch.events)
            self._bytes += sum(len(ev.wire) for ev in batch.events)
            # Trim in steps (amortised O(1) per event) to at most `ring` events and about
            # `ring_bytes` of encoded events (the rows, decoded, take about as much again).
            if len(self._ring) > 2 * self.ring or self._bytes > 2 * self.ring_bytes:
                cut = max(0, len(self._ring) - self.ring)
                dropped = sum(len(ev.wire) for ev in self._ring[:cut])
                while cut < len(self._ring) and self._bytes - dropped > self.ring_bytes:
                    dropped += len(self._ring[cut].wire)
                    cut += 1
                if cut:
                    self.covered = self._seqs[cut - 1]
                    del self._ring[:cut], self._seqs[:cut]
                    self._bytes -= dropped
        self.seq = max(self.seq, batch.seq)
        woken, self._advanced = self._advanced, asyncio.Event()
        woken.set()

    def after(self, seq: int, limit: int) -> Batch | None:
        """The events after *seq* from memory (at most *limit*), or None when *seq* is older
        than the ring covers (the stream must read the source)."""
        if seq < self.covered:
            return None
        if seq >= self.seq:
            return Batch((), seq)
        i = bisect.bisect_right(self._seqs, seq)
        events = tuple(self._ring[i:i + limit])
        if len(events) == limit and i + limit < len(self._ring):
            return Batch(events, events[-1].seq)
        return Batch(events, self.seq)

    async def wait_beyond(self, seq: int, timeout: float | None) -> bool:  # noqa: ASYNC109
        """Wait until the hub is past *seq* (or *timeout*); True when it is."""
        if self.seq > seq:
            return True
        event = self._advanced
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
        return self.seq > seq
