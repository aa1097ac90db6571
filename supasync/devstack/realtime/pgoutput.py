"""Sans-I/O decoder of the ``pgoutput`` logical replication protocol, version 1.

Input: the ``data`` column of
``pg_logical_slot_get_binary_changes(slot, NULL, n, 'proto_version', '1',
'publication_names', 'supabase_realtime')``, one message per row. Output: message objects
(:func:`decode_message`) and, through :class:`ChangeAssembler`, whole row changes
(:class:`RowChange`) carrying their relation, the transaction's commit LSN and commit time.

Why pgoutput (realtime-protocol.md §6): it ships with PostgreSQL and honours the
publication itself, so changes to tables outside ``supabase_realtime`` never reach us.

Format facts this module relies on (PostgreSQL "Logical Replication Message Formats"):

* every message starts with one type byte; integers are big-endian; strings are
  NUL-terminated; an LSN is an unsigned 64-bit integer; timestamps are microseconds since
  2000-01-01 00:00 UTC;
* a Relation message precedes the first change of each table in every SQL call (each call
  builds a fresh decoding context), so the decoder keeps a relation cache that later messages
  replace;
* tuple columns are ``n`` (NULL), ``u`` (unchanged TOASTed value: the column is left out of
  the record, like wal2json does) or ``t`` (text form of the value);
* an UPDATE carries the old tuple only when the key changed (``K``, replica identity
  DEFAULT/INDEX: only key columns are meaningful, the others arrive as NULL) or always
  (``O``, REPLICA IDENTITY FULL); a DELETE always carries ``K`` or ``O``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


class PgOutputError(ValueError):
    """The bytes are not a well-formed pgoutput v1 message."""


class _Unchanged:
    """Marker for an unchanged TOASTed column (``u``)."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()

#: One column of a tuple: its text form, ``None`` for NULL, or :data:`UNCHANGED`.
TupleValue = str | None | _Unchanged


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True)
class Relation:
    relid: int
    schema: str
    table: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True)
class TypeInfo:
    type_oid: int
    schema: str
    name: str


@dataclass(frozen=True)
class Insert:
    relid: int
    new: tuple[TupleValue, ...]


@dataclass(frozen=True)
class Update:
    relid: int
    old_kind: str | None  # 'K', 'O' or None
    old: tuple[TupleValue, ...] | None
    new: tuple[TupleValue, ...]


@dataclass(frozen=True)
class Delete:
    relid: int
    old_kind: str  # 'K' or 'O'
    old: tuple[TupleValue, ...]


@dataclass(frozen=True)
class Truncate:
    options: int
    relids: tuple[int, ...]


@dataclass(frozen=True)
class Unknown:
    kind: str
    data: bytes


Message = (
    Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete | Truncate | Unknown
)


def pg_time(micros: int) -> datetime:
    """A PostgreSQL timestamp (microseconds since 2000-01-01 UTC) as an aware datetime."""
    return PG_EPOCH + timedelta(microseconds=micros)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise PgOutputError(f"message truncated at byte {self.pos} (wanted {n} more)")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def i16(self) -> int:
        return int(struct.unpack(">h", self.take(2))[0])

    def i32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def i64(self) -> int:
        return int(struct.unpack(">q", self.take(8))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise PgOutputError(f"unterminated string at byte {self.pos}")
        s = self.data[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return s

    def tuple_data(self) -> tuple[TupleValue, ...]:
        n = self.i16()
        values: list[TupleValue] = []
        data = self.data
        for _ in range(n):
            kind = self.take(1)
            if kind == b"t":
                length = self.i32()
                start = self.pos
                self.pos = start + length
                if self.pos > len(data):
                    raise PgOutputError("tuple value runs past the end of the message")
                values.append(data[start : self.pos].decode("utf-8"))
            elif kind == b"n":
                values.append(None)
            elif kind == b"u":
                values.append(UNCHANGED)
            else:
                # 'b' (binary) only exists from protocol 2 with binary=true, which we never ask for.
                raise PgOutputError(f"unsupported tuple column kind {kind!r}")
        return tuple(values)


def decode_message(data: bytes) -> Message:
    """Decode one pgoutput v1 message. Raises :class:`PgOutputError` on malformed input."""
    if not data:
        raise PgOutputError("empty message")
    r = _Reader(bytes(data))
    kind = chr(r.u8())
    if kind == "B":
        return Begin(final_lsn=r.u64(), commit_time=pg_time(r.i64()), xid=r.u32())
    if kind == "C":
        return Commit(
            flags=r.u8(), commit_lsn=r.u64(), end_lsn=r.u64(), commit_time=pg_time(r.i64())
        )
    if kind == "O":
        return Origin(lsn=r.u64(), name=r.string())
    if kind == "R":
        relid = r.u32()
        schema = r.string() or "pg_catalog"  # the protocol sends "" for pg_catalog
        table = r.string()
        ident = chr(r.u8())
        cols = []
        for _ in range(r.i16()):
            flags = r.u8()
            name = r.string()
            cols.append(Column(name, r.u32(), r.i32(), is_key=bool(flags & 1)))
        return Relation(relid, schema, table, ident, tuple(cols))
    if kind == "Y":
        return TypeInfo(type_oid=r.u32(), schema=r.string() or "pg_catalog", name=r.string())
    if kind == "I":
        relid = r.u32()
        if r.take(1) != b"N":
            raise PgOutputError("INSERT without a new tuple")
        return Insert(relid, r.tuple_data())
    if kind == "U":
        relid = r.u32()
        marker = r.take(1)
        old_kind: str | None = None
        old: tuple[TupleValue, ...] | None = None
        if marker in (b"K", b"O"):
            old_kind = marker.decode()
            old = r.tuple_data()
            marker = r.take(1)
        if marker != b"N":
            raise PgOutputError("UPDATE without a new tuple")
        return Update(relid, old_kind, old, r.tuple_data())
    if kind == "D":
        relid = r.u32()
        marker = r.take(1)
        if marker not in (b"K", b"O"):
            raise PgOutputError("DELETE without an old tuple")
        return Delete(relid, marker.decode(), r.tuple_data())
    if kind == "T":
        n = r.u32()
        options = r.u8()
        return Truncate(options, tuple(r.u32() for _ in range(n)))
    return Unknown(kind, bytes(data))


@dataclass
class RowChange:
    """One INSERT, UPDATE or DELETE, ready for filtering and rendering.

    ``new`` holds the new row's columns by name (unchanged TOASTed columns are absent);
    ``old`` holds the old identity: every column for REPLICA IDENTITY FULL, only the key
    columns for ``K`` tuples, and ``None`` when the server sent no old tuple (an UPDATE that
    did not change the key). Values are text forms or ``None`` for NULL.
    """

    op: str  # "INSERT" | "UPDATE" | "DELETE"
    relation: Relation
    new: dict[str, str | None] | None
    old: dict[str, str | None] | None
    old_kind: str | None
    commit_lsn: int
    commit_time: datetime
    xid: int
    seq: int = 0  # position in the stream, for stable ordering
    size: int = field(default=0)  # bytes of text values, for the 413 estimate


def _as_dict(
    rel: Relation, values: tuple[TupleValue, ...], keys_only: bool
) -> tuple[dict[str, str | None], int]:
    out: dict[str, str | None] = {}
    size = 0
    for col, value in zip(rel.columns, values, strict=False):
        if value is UNCHANGED:
            continue
        if keys_only and not col.is_key:
            continue
        assert not isinstance(value, _Unchanged)
        out[col.name] = value
        size += len(col.name) + (len(value) if value is not None else 4)
    return out, size


class ChangeAssembler:
    """Turn a stream of messages into :class:`RowChange` objects.

    Feed every message of one or more ``get_binary_changes`` calls, in order, to
    :meth:`feed`; it returns the row changes the message completes (at most one). Relations
    are remembered across calls (and replaced whenever the server resends them). TRUNCATE,
    Origin and Type messages produce nothing: the real server never delivers TRUNCATE
    (realtime-protocol.md §6).
    """

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        self._begin: Begin | None = None
        self._seq = 0

    def feed(self, data: bytes) -> RowChange | None:
        return self.feed_message(decode_message(data))

    def feed_message(self, msg: Message) -> RowChange | None:
        if isinstance(msg, Begin):
            self._begin = msg
            return None
        if isinstance(msg, Commit):
            self._begin = None
            return None
        if isinstance(msg, Relation):
            self.relations[msg.relid] = msg
            return None
        if isinstance(msg, Insert | Update | Delete):
            begin = self._begin
            if begin is None:
                raise PgOutputError("row change outside a transaction")
            rel = self.relations.get(msg.relid)
            if rel is None:
                raise PgOutputError(f"row change for unknown relation {msg.relid}")
            self._seq += 1
            new: dict[str, str | None] | None = None
            old: dict[str, str | None] | None = None
            old_kind: str | None = None
            size = 0
            if isinstance(msg, Insert):
                new, size = _as_dict(rel, msg.new, keys_only=False)
                op = "INSERT"
            elif isinstance(msg, Update):
                new, size = _as_dict(rel, msg.new, keys_only=False)
                if msg.old is not None:
                    old, osize = _as_dict(rel, msg.old, keys_only=msg.old_kind == "K")
                    size += osize
                old_kind = msg.old_kind
                op = "UPDATE"
            else:
                old, size = _as_dict(rel, msg.old, keys_only=msg.old_kind == "K")
                old_kind = msg.old_kind
                op = "DELETE"
            return RowChange(
                op=op,
                relation=rel,
                new=new,
                old=old,
                old_kind=old_kind,
                commit_lsn=begin.final_lsn,
                commit_time=begin.commit_time,
                xid=begin.xid,
                seq=self._seq,
                size=size,
            )
        return None
