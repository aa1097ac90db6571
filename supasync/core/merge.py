"""Merging replayed and live changes into one ordered stream: the sans-I/O heart of gap repair.

Theory of operation
-------------------
A :class:`Merger` holds, for one subscription, the image of every row its handlers have been
given (the *view*: primary key -> :class:`CachedRow`). That image is what the cache stores, so
"cache == what handlers have seen" is an invariant, not a hope. Every input turns into two
outputs: the :class:`~supasync.core.changes.Change` values to deliver, and the :class:`RowWrite`
values to persist (taken with :meth:`Merger.take_writes` and written with the cursor in one
transaction by the caller).

The Realtime server keeps no backlog for postgres_changes (``docs/anchors.md`` §3.1): whatever
commits while a client is away is lost. So a gap is repaired like this (``design.md`` §2):

1. :meth:`Merger.gap` - the subscription stopped being live. Live changes that arrive from now
   until :meth:`Merger.finish` are *buffered*, in arrival order (the server sends them in
   commit order).
2. The repair reads the server (the I/O layer, :mod:`supasync.repair.repairer`) *after* the
   subscription is
   live again, so every commit is either visible to the read or arrives as a live change, or
   both. Fetched rows go through :meth:`Merger.replay_rows` and keys known to be gone through
   :meth:`Merger.replay_absent` / :meth:`Merger.replay_missing`: each difference against the
   view becomes a replayed Change (``origin="replay"``): INSERT, UPDATE with ``old`` from the
   view, or DELETE with ``old`` from the view. Identical rows produce nothing.
3. :meth:`Merger.finish` drains the buffer. For each row, the buffered changes the read already
   reflects are dropped (see *Dedupe* below); the rest are delivered in arrival order, after
   every replayed change. From then on live changes pass straight through (still deduped).

Dedupe and ordering
-------------------
A live change is *already held* when the view holds a state at least as new:

* **Versions.** With a version column (``updated_at`` or any column every write bumps, see
  :class:`Versioning`) both the view and the change carry a version. A change whose version is
  lower than the view's is dropped; an equal version is dropped only if the content is equal too
  (two writes in one transaction share ``now()``).
* **Content, for buffered changes.** Without versions, the buffered changes of one row are
  compared with the replayed image: if the image equals the result of the *k*-th buffered change
  of that row (DELETE results in "no row"), changes 1..k are already reflected and dropped. The
  last match wins, so a row that went A -> B -> A after the read keeps its final state.

Replayed rows are never version-checked: the read runs after everything in the view was
delivered, so it is at least as new, and trusting it heals a view misled by a "version" column
that some write moved backwards (a live change with a lower version is dropped until then).

What is promised: per row, handlers get changes in commit order; after all live changes have
arrived the view equals the server's rows as the subscriber may see them; and with a version
column no replayed or live state older than one already delivered is delivered for a row that
exists. What is not: without versions, if the read saw a commit whose live change had not yet
arrived when the repair finished, the buffered older changes of that row are delivered after the
newer replayed image (a transient step back that the late live change repairs). The same holds
for a row deleted in the read whose older live UPDATE arrives after the repair: DELETEs carry no
version, so nothing can tell the two orders apart.

Where the view lives
--------------------
The view is a :class:`RowView`. :class:`DictView` keeps it in a dict (the in-memory cache); the
store's :class:`~supasync.store.view.StoredView` reads it from the subscription's SQLite table by
key, in batches (:meth:`RowView.prefetch`), so the Merger holds no per-row state of its own:
only the writes not yet persisted (one per key, :meth:`Merger.take_writes`), which every read
consults first, and a page of prefetched rows. Keys seen by the current repair are *marked* in
the view (:meth:`RowView.mark`: a set, or a temporary SQLite table) and the keys it holds but no
read saw come back in chunks (:meth:`RowView.unmarked`), so a full comparison of a million rows
holds no key set in Python either.

Visibility (RLS and filters): a DELETE for a key the view does not hold is not for this
subscriber (the server sends DELETEs unfiltered) and is dropped; an INSERT/UPDATE whose row no
longer matches the subscription's filter becomes a DELETE for this subscriber (a *move-out*,
with the held row as ``old``), one of a key the view lacks an INSERT (a *move-in*), and one that
neither matches nor is held is dropped. The subscription feeds every UPDATE of the table here
when the filter cannot be left to the server (``moves=True``, :mod:`supasync.core.moves`).
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .changes import Change, Op, change_from_row, parse_timestamp

__all__ = [
    "ALL_OPS",
    "CachedRow",
    "Counts",
    "DictView",
    "Key",
    "Merger",
    "RowView",
    "RowWrite",
    "Versioning",
    "canonical_row",
    "same_row",
]

Key = tuple[Any, ...]
ALL_OPS: frozenset[str] = frozenset({"INSERT", "UPDATE", "DELETE"})

# PostgreSQL text output ("2026-11-25 22:57:15.1+00") and JSON output
# ("2026-11-25T22:57:15.1+00:00") of the same timestamptz differ; Realtime and PostgREST may
# use either, so timestamps are compared as instants.
_TIMESTAMP = re.compile(
    r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
)


def _canonical(value: Any) -> Any:
    if isinstance(value, str) and _TIMESTAMP.match(value):
        ts = parse_timestamp(value)
        if ts is not None:
            return ts.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def canonical_row(row: Mapping[str, Any], columns: Sequence[str] | None = None) -> dict[str, Any]:
    """The row as compared: only *columns* when given, timestamps as UTC instants."""
    names = columns if columns is not None else list(row)
    return {name: _canonical(row.get(name)) for name in names if name in row}


def same_row(
    a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, columns: Sequence[str] | None = None
) -> bool:
    """Whether two row images hold the same values (``None`` means "no row")."""
    if a is None or b is None:
        return a is None and b is None
    return canonical_row(a, columns) == canonical_row(b, columns)


@dataclass(frozen=True)
class Versioning:
    """How a row's version is read from its columns.

    ``column`` is a column every write bumps (``updated_at`` filled by a trigger, or an integer
    counter). Its value becomes an int: integers as they are, timestamps as microseconds since the
    epoch, anything else (or a missing column) as None, meaning "unknown". ``Versioning()`` (no
    column) knows no versions; dedupe then compares contents only.
    """

    column: str | None = None

    def of(self, row: Mapping[str, Any] | None) -> int | None:
        if self.column is None or row is None:
            return None
        return version_value(row.get(self.column))


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def version_value(value: Any) -> int | None:
    """An orderable int for a version-column value, or None if it has none."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    ts = parse_timestamp(value)
    if ts is None:
        return None
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class CachedRow:
    """A row as delivered: its key, its image and its version (None when unknown)."""

    pk: Key
    row: Mapping[str, Any]
    version: int | None = None


@dataclass(frozen=True, slots=True)
class RowWrite:
    """One change to persist: ``row=None`` deletes the key. ``origin`` (``live``, ``replay``,
    ``snapshot``) and ``committed`` (the change's commit time, ISO 8601, when known) go into
    the store's change journal with it."""

    pk: Key
    row: Mapping[str, Any] | None
    version: int | None = None
    origin: str = "live"
    committed: str | None = None


class RowView(Protocol):
    """Where a :class:`Merger` finds the rows its handlers have been given (see the module
    docstring, *Where the view lives*). Keys are primary-key tuples as the rows carry them.

    The Merger calls :meth:`put`/:meth:`remove` as it decides, and keeps the same writes for the
    caller to persist (:meth:`Merger.take_writes`); a view backed by storage may ignore them
    (the persisted writes reach it), but must not answer :meth:`get` from a state older than
    the last persisted write. :meth:`forget` is called after every :meth:`Merger.take_writes`.
    """

    def get(self, pk: Key) -> CachedRow | None: ...

    def prefetch(self, keys: Sequence[Key]) -> None:
        """A hint: :meth:`get` is about to be asked for these keys."""
        ...

    def put(self, row: CachedRow) -> None: ...

    def remove(self, pk: Key) -> None: ...

    def forget(self) -> None:
        """Drop anything read ahead (the writes so far are persisted)."""
        ...

    def clear_marks(self) -> None: ...

    def mark(self, keys: Iterable[Key]) -> None:
        """Record keys seen upstream by the current repair."""
        ...

    def is_marked(self, pk: Key) -> bool: ...

    def unmarked(self, chunk: int) -> Iterator[list[CachedRow]]:
        """The held rows whose keys are not marked, *chunk* at a time (persisted rows only;
        safe to delete from between chunks)."""
        ...

    def rows(self) -> Iterator[CachedRow]:
        """Every held row (tests and small tables; not for hot paths)."""
        ...

    def __len__(self) -> int: ...


class DictView(dict[Key, CachedRow]):
    """A :class:`RowView` in a dict (the in-memory cache, and tests)."""

    def __init__(self, rows: Iterable[CachedRow] = ()) -> None:
        super().__init__((r.pk, r) for r in rows)
        self._marks: set[Key] = set()

    def prefetch(self, keys: Sequence[Key]) -> None:
        pass

    def put(self, row: CachedRow) -> None:
        self[row.pk] = row

    def remove(self, pk: Key) -> None:
        self.pop(pk, None)

    def forget(self) -> None:
        pass

    def clear_marks(self) -> None:
        self._marks = set()

    def mark(self, keys: Iterable[Key]) -> None:
        self._marks.update(keys)

    def is_marked(self, pk: Key) -> bool:
        return pk in self._marks

    def unmarked(self, chunk: int) -> Iterator[list[CachedRow]]:
        gone = [r for pk, r in self.items() if pk not in self._marks]
        for start in range(0, len(gone), chunk):
            yield gone[start : start + chunk]

    def rows(self) -> Iterator[CachedRow]:
        return iter(list(self.values()))


@dataclass
class Counts:
    """Replayed changes by kind, for ``GapRepaired``."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0

    def add(self, op: str) -> None:
        self.add_many(op, 1)

    def add_many(self, op: str, n: int) -> None:
        if op == "INSERT":
            self.inserted += n
        elif op == "UPDATE":
            self.updated += n
        else:
            self.deleted += n


@dataclass
class _Buffered:
    seq: int
    change: Change


@dataclass
class Merger:
    """Per-subscription merge state; see the module docstring for the contract.

    Args:
        schema, table, pk_columns: the subscribed table and its primary key.
        subscription: stored on every Change produced.
        versioning: how versions are read from rows.
        matches: the subscription's filter as a predicate on a row (``Filter.matches``).
        events: which ops handlers asked for; others update the view but are not delivered.
        columns: the subscription's column list (None = all); rows are compared and stored on
            these columns (plus the key).
        rows: rows to start from (put into the view).
        view: where the view lives (:class:`RowView`; default a new :class:`DictView`).
        compare_columns: without ``columns``, compare rows on these only (a store whose table
            holds these columns: a column added upstream since is not a difference).

    Calls are not thread-safe; one asyncio task drives a Merger at a time.
    """

    schema: str
    table: str
    pk_columns: tuple[str, ...]
    subscription: str | None = None
    versioning: Versioning = field(default_factory=Versioning)
    matches: Callable[[Mapping[str, Any]], bool] = lambda row: True
    events: frozenset[str] = ALL_OPS
    columns: tuple[str, ...] | None = None
    rows: Iterable[CachedRow] = ()
    view: RowView = field(default_factory=DictView)
    compare_columns: tuple[str, ...] | None = None
    #: Keep every write until :meth:`take_writes`, in order, instead of one per key (latest
    #: wins): a store whose change journal must hold every change applied (the mirror's file,
    #: which the relay publishes change by change) gets an insert and the update right behind
    #: it as two entries.
    every_write: bool = False

    def __post_init__(self) -> None:
        if not self.pk_columns:
            raise ValueError(
                f"{self.schema}.{self.table}: a primary key is required to cache and repair rows; "
                "give the subscription's primary_key or add a primary key to the table"
            )
        for r in self.rows:
            self.view.put(r)
        self.rows = ()
        self.repairing = False
        self.counts = Counts()
        # The origin of replayed changes: "snapshot" for the first fill of an empty cache
        # (the gate sets it per repair), "replay" for every later repair.
        self.replay_origin: str = "replay"
        # Nothing consumes replayed changes (a read model): a repair updates the view and
        # its writes without building them (the gate sets it per repair).
        self.quiet = False
        self._buffer: list[_Buffered] = []
        self._seq = 0
        self._writes: dict[Key, RowWrite] = {}
        self._ordered: list[RowWrite] = []
        self._compare: tuple[str, ...] | None = None
        if self.columns is not None:
            self._compare = tuple(dict.fromkeys((*self.pk_columns, *self.columns)))
        # What rows are compared on: the subscription's columns, else the store's.
        self._same_cols = self._compare if self._compare is not None else self.compare_columns

    # ------------------------------------------------------------------ helpers

    def key_of(self, row: Mapping[str, Any]) -> Key:
        """The primary-key tuple of *row* (raises KeyError naming the missing column)."""
        try:
            return tuple(row[c] for c in self.pk_columns)
        except KeyError as exc:
            raise KeyError(
                f"row of {self.schema}.{self.table} lacks primary-key column {exc.args[0]!r}"
            ) from None

    def _project(self, row: Mapping[str, Any]) -> dict[str, Any]:
        if self._compare is None:
            return dict(row)
        return {k: row[k] for k in self._compare if k in row}

    def _get(self, pk: Key) -> CachedRow | None:
        """The view's row for *pk*, the writes not yet persisted first."""
        pending = self._writes.get(pk)
        if pending is not None:
            return None if pending.row is None else CachedRow(pk, pending.row, pending.version)
        return self.view.get(pk)

    def holds(self, pk: Key) -> bool:
        """Whether the view holds a row with this key (delivered and not deleted)."""
        return self._get(tuple(pk)) is not None

    def _set(self, pk: Key, row: Mapping[str, Any] | None, version: int | None,
             origin: str = "replay", committed: str | None = None) -> None:
        if row is None:
            self.view.remove(pk)
        else:
            self.view.put(CachedRow(pk, row, version))
        if origin == "replay":
            origin = self.replay_origin
        write = RowWrite(pk, row, version, origin, committed)
        self._writes[pk] = write
        if self.every_write:
            self._ordered.append(write)

    def _change(
        self,
        op: Op,
        new: Mapping[str, Any] | None,
        old: Mapping[str, Any] | None,
        origin: str,
        *,
        like: Change | None = None,
        version: int | None = None,
    ) -> Change:
        if like is not None:
            return Change(
                schema=like.schema,
                table=like.table,
                op=op,
                new=new,
                old=old,
                pk=self.key_of(new if new is not None else old or {}),
                pk_columns=self.pk_columns,
                commit_timestamp=like.commit_timestamp,
                columns=like.columns,
                origin=like.origin,
                partial=like.partial,
                errors=like.errors,
                version=like.version,
                subscription=self.subscription or like.subscription,
            )
        return change_from_row(
            self.schema,
            self.table,
            op,
            new,
            old,
            self.pk_columns,
            origin="snapshot" if origin == "snapshot" else "replay",
            version=version,
            subscription=self.subscription,
        )

    def _deliverable(self, changes: Iterable[Change]) -> list[Change]:
        return [c for c in changes if c.op in self.events]

    @property
    def has_writes(self) -> bool:
        """Whether :meth:`take_writes` has anything to give."""
        return bool(self._writes)

    def take_writes(self) -> list[RowWrite]:
        """The view changes since the last call, one per key (latest wins), to persist."""
        if self.every_write:
            writes, self._ordered = self._ordered, []
        else:
            writes = list(self._writes.values())
        self._writes.clear()
        self.view.forget()
        return writes

    @property
    def buffered(self) -> int:
        """How many live changes wait for :meth:`finish`."""
        return len(self._buffer)

    def take_buffer(self) -> list[Change]:
        """The buffered live changes, in arrival order, taken out (to hand them to a merger
        made for the table's new shape)."""
        taken, self._buffer = [item.change for item in self._buffer], []
        return taken

    def drop_buffer(self) -> int:
        """Forget the buffered live changes (too many arrived during a repair); returns how
        many. The caller must read the whole table again after this repair: only a read that
        starts after the drop sees what they changed."""
        dropped = len(self._buffer)
        self._buffer.clear()
        return dropped

    # ------------------------------------------------------------------ gap and repair

    def gap(self) -> None:
        """The subscription is not live: buffer live changes until :meth:`finish`.

        Calling it again during a repair keeps the buffer (a gap within a gap needs the same
        repair, which the caller restarts).
        """
        if not self.repairing:
            self.repairing = True
            self.counts = Counts()
            self.view.clear_marks()

    def restart_repair(self) -> None:
        """Forget the keys seen by an interrupted read, keeping the buffer and the view."""
        self.view.clear_marks()

    def replay_rows(
        self, rows: Iterable[Mapping[str, Any]], *, version: int | None = None
    ) -> list[Change]:
        """Compare fetched rows with the view; returns the replayed Changes to deliver.

        Rows not matching the subscription's filter are treated as absent (a row the filter
        rejects is, for this subscriber, deleted). *version* (e.g. the transaction id of the log
        entry) is stored on the Changes; the view's version comes from :class:`Versioning`.
        """
        out: list[Change] = []
        images = [self._project(fetched) for fetched in rows]
        keys = [self.key_of(row) for row in images]
        self.view.prefetch([pk for pk in keys if pk not in self._writes])
        seen: list[Key] = []
        for row, pk in zip(images, keys, strict=True):
            if not self._matches(row):
                # PostgREST returned it but the filter rejects it (e.g. a like pattern PostgREST
                # can only approximate): for this subscriber the row does not exist.
                out += self.replay_absent([pk], version=version)
                continue
            seen.append(pk)
            cached = self._get(pk)
            v = self.versioning.of(row)
            if cached is not None and same_row(cached.row, row, self._same_cols):
                if cached.version != v and v is not None:
                    self._set(pk, cached.row, v)  # learn the version, nothing to deliver
                continue
            # No version check here: the read happened after everything in the view was
            # delivered (live changes are buffered during a repair), so it is at least as new.
            # Trusting it also heals a view misled by a version column some write moved back.
            op: Op = "INSERT" if cached is None else "UPDATE"
            if not self.quiet:
                out.append(self._change(
                    op, row, cached.row if cached else None, self.replay_origin, version=version
                ))
            self._set(pk, row, v)
            self.counts.add(op)
        self.view.mark(seen)
        return self._deliverable(out)

    def replay_absent(self, keys: Iterable[Key], *, version: int | None = None) -> list[Change]:
        """Keys the server says no longer exist for this subscriber: DELETEs for those held."""
        out: list[Change] = []
        for pk in keys:
            pk = tuple(pk)
            cached = self._get(pk)
            if cached is None or self.view.is_marked(pk):
                continue
            self._absent(cached, out, version)
        return self._deliverable(out)

    def _absent(self, cached: CachedRow, out: list[Change], version: int | None = None) -> None:
        if not self.quiet:
            out.append(self._change("DELETE", None, cached.row, self.replay_origin,
                                    version=version))
        self._set(cached.pk, None, None)
        self.counts.add("DELETE")

    def mark_present(self, keys: Iterable[Key]) -> None:
        """Keys a key-only scan saw upstream (cursor mode's delete check): not deleted."""
        self.view.mark(tuple(k) for k in keys)

    def replay_unmarked(self, chunk: int = 1000) -> Iterator[list[Change]]:
        """After a full scan: DELETEs for every key held that no read of this repair saw,
        *chunk* keys at a time (persist each chunk's writes before asking for the next)."""
        pending = [CachedRow(pk, w.row, w.version) for pk, w in list(self._writes.items())
                   if w.row is not None and not self.view.is_marked(pk)]
        if pending:
            out: list[Change] = []
            for r in pending:
                self._absent(r, out)
            yield self._deliverable(out)
        for rows in self.view.unmarked(chunk):
            out = []
            for row in rows:
                current = self._get(row.pk)  # a write not yet persisted may have removed it
                if current is not None:
                    self._absent(current, out)
            yield self._deliverable(out)

    def replay_missing(self, present: Iterable[Key]) -> list[Change]:
        """After a full scan that saw the keys *present*: DELETEs for every other key held
        (all at once; :meth:`replay_unmarked` gives them in chunks)."""
        self.mark_present(present)
        return [c for part in self.replay_unmarked() for c in part]

    def replay_suspects(self, rows: Iterable[Mapping[str, Any]],
                        keys: Iterable[Key]) -> list[Change]:
        """Deliver again the server's state of *keys*, whose last delivery may never have
        reached the view (a crash between delivering a change and caching its row).

        Unlike :meth:`replay_rows`, every key is delivered whatever the view holds, since the
        handlers may have seen a state the view never did: an INSERT or UPDATE with the
        fetched row (*rows*: what the server returned for *keys*), or a DELETE for a key the
        server no longer has for this subscriber, even one the view does not hold.
        """
        found: dict[Key, dict[str, Any]] = {}
        for fetched in rows:
            image = self._project(fetched)
            if self._matches(image):
                found[self.key_of(image)] = image
        out: list[Change] = []
        for pk in dict.fromkeys(tuple(k) for k in keys):
            cached = self._get(pk)
            row = found.get(pk)
            if row is not None:
                op: Op = "INSERT" if cached is None else "UPDATE"
                out.append(self._change(op, row, cached.row if cached else None,
                                        self.replay_origin))
                self._set(pk, row, self.versioning.of(row))
                self.view.mark([pk])
            else:
                old = cached.row if cached is not None else dict(zip(self.pk_columns, pk,
                                                                     strict=True))
                out.append(self._change("DELETE", None, old, self.replay_origin))
                self._set(pk, None, None)
                op = "DELETE"
            self.counts.add(op)
        return self._deliverable(out)

    def finish(self) -> list[Change]:
        """End the repair: drain the buffered live changes; returns those to deliver.

        Per row, the buffered changes already reflected by the view are dropped (module
        docstring, *Dedupe*); the others are applied in arrival order.
        """
        buffered, self._buffer = self._buffer, []
        self.repairing = False
        self.view.clear_marks()
        by_key: dict[Key, list[_Buffered]] = {}
        for item in buffered:
            by_key.setdefault(item.change.pk, []).append(item)
        self.view.prefetch([pk for pk in by_key if pk not in self._writes])
        dropped: set[int] = set()
        for pk, items in by_key.items():
            cached = self._get(pk)
            cut = -1
            for i, item in enumerate(items):
                result = self._result_of(item.change, cached)
                if result is _UNKNOWN:
                    continue
                v = self.versioning.of(item.change.new)
                if cached is not None and cached.version is not None and v is not None:
                    if v < cached.version or (
                        v == cached.version and same_row(result, cached.row, self._same_cols)
                    ):
                        cut = i
                    continue
                if same_row(result, cached.row if cached else None, self._same_cols):
                    cut = i
            dropped.update(item.seq for item in items[: cut + 1])
        out: list[Change] = []
        for item in buffered:
            if item.seq not in dropped:
                out.extend(self._apply_live(item.change))
        return out

    # ------------------------------------------------------------------ live

    def live(self, change: Change) -> list[Change]:
        """A live change in arrival order; returns the Changes to deliver now (none while a
        repair is under way: then it is buffered)."""
        if change.pk_columns != self.pk_columns:
            change = self._rekey(change)
        if not change.pk:
            # No key (an error payload): nothing to merge; deliver it as the server sent it.
            return self._deliverable([change])
        if self.repairing:
            self._seq += 1
            self._buffer.append(_Buffered(self._seq, change))
            return []
        return self._apply_live(change)

    def _rekey(self, change: Change) -> Change:
        # The decoder may have guessed the key (changes.py); the subscription knows it.
        first, second = change.new, change.old
        if change.op == "DELETE":
            first, second = second, first
        values: list[Any] = []
        for name in self.pk_columns:
            if first is not None and name in first:
                values.append(first[name])
            elif second is not None and name in second:
                values.append(second[name])
            else:
                return replace(change, pk=(), pk_columns=self.pk_columns, partial=True)
        return replace(change, pk=tuple(values), pk_columns=self.pk_columns)

    def _result_of(self, change: Change, cached: CachedRow | None) -> Any:
        """The row image *change* leaves behind (None: no row), or _UNKNOWN."""
        if change.op == "DELETE":
            return None
        if change.new is None:
            return _UNKNOWN
        row = self._project(change.new)
        if change.partial and cached is not None:
            row = {**cached.row, **row}
        # Judge the filter on everything the change carries: the projection to the
        # subscription's columns may have left out a filter column (an UPDATE of the
        # unfiltered binding is asked to carry them, see client.subscription.plan_bindings).
        judged = {**row, **change.new} if self._compare is not None else row
        if not self._matches(judged):
            return None
        return row

    def _matches(self, row: Mapping[str, Any]) -> bool:
        try:
            return self.matches(row)
        except (KeyError, TypeError, ValueError):
            # The filter names a column the (partial) row lacks: the server already filtered it.
            return True

    def _apply_live(self, change: Change) -> list[Change]:
        pk = change.pk
        cached = self._get(pk)
        ts = change.commit_timestamp
        committed = None if ts is None else ts.isoformat()
        if change.op == "DELETE":
            if cached is None:
                return []  # never delivered to this subscriber (RLS, filter): not ours
            self._set(pk, None, None, "live", committed)
            return self._deliverable(
                [self._change("DELETE", None, cached.row, "live", like=change)]
            )
        result = self._result_of(change, cached)
        if result is _UNKNOWN:
            return self._deliverable([change])
        if result is None:
            # The row no longer matches the filter: for this subscriber it is gone.
            if cached is None:
                return []
            self._set(pk, None, None, "live", committed)
            return self._deliverable(
                [self._change("DELETE", None, cached.row, "live", like=change)]
            )
        v = self.versioning.of(result)
        if cached is not None:
            if cached.version is not None and v is not None:
                if v < cached.version:
                    return []
                if v == cached.version and same_row(cached.row, result, self._same_cols):
                    return []
        self._set(pk, result, v, "live", committed)
        # An UPDATE of a row the view lacks is an INSERT for this subscriber (it became
        # visible); an INSERT of a held key (re-delivered, or delete+insert merged) an UPDATE.
        op: Op = "INSERT" if cached is None else "UPDATE"
        return self._deliverable(
            [self._change(op, result, cached.row if cached else None, "live", like=change)]
        )

    def snapshot(self) -> Iterator[CachedRow]:
        """The view's rows (what handlers have been given), the writes not yet persisted
        included. Reads every row: for tests and small tables."""
        pending = dict(self._writes)
        for row in self.view.rows():
            if row.pk not in pending:
                yield row
        for pk, w in pending.items():
            if w.row is not None:
                yield CachedRow(pk, w.row, w.version)


class _Unknown:
    pass


_UNKNOWN: Any = _Unknown()
